"""Calibration (`pipeplan calibrate`): measure the local device with torch and fit the cost
model to it. The method, and figures measured with it: docs/calibration.md.

    from runners.calibrate import ModelRequest, calibrate
    profile = calibrate(device="cpu", models=[ModelRequest("gpt.onnx", ShapeBindings(batch=8))])
    save_profile(profile, "cpu.yaml")          # cost.profile

The data flow of `calibrate()` (`session`), module by module:

1. `microbench`: GEMM, launch, elementwise, convolution and optimizer-step points, each a
   median of `timing.Timer` at `timing.Sizes` (full, or quick).
2. `link`: two `link_child` processes ping-pong messages: one-way times, quiet and while
   both compute.
3. `model_ops`: each distinct operator of the models, timed alone as a one-node model
   (`operators.OpTimer`), and the whole model around them; with `concurrency` > 1 the other
   cores run the model meanwhile (`load`, `load_child`).
4. `fits`: the points become the device figures (`ProfileDevice`), the link
   (`ProfileLink`) and the optimizer steps (`OptimizerFit`); `model_ops` spreads each
   model's context excess over its operators (`OpTiming`).
5. `probe` (with `pipeline` >= 2): each model runs as a real pipeline; its operators are
   scaled to the measured stage times, and the link's latency refitted so that the
   simulator reproduces the measured iterations.
6. `session` puts it all, with the machine facts and the raw points, in a
   `cost.profile.Profile`.
"""

from runners.calibrate.model_ops import ModelRequest
from runners.calibrate.session import Progress, calibrate, profile_summary

__all__ = ["ModelRequest", "Progress", "calibrate", "profile_summary"]
