"""A background load process (`runners.calibrate.load.BackgroundLoad`):

    python -m runners.calibrate.load_child SPEC_JSON READY_FILE

loads the model of SPEC (JSON: path, dims, batch, input_shapes), converts it with random
weights and runs its whole forward and backward in a loop until killed, writing READY_FILE
once the first iteration has run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from planner.graph.shapes import ShapeBindings
from runners.calibrate.operators import whole_model_inputs

USAGE = "usage: python -m runners.calibrate.load_child SPEC_JSON READY_FILE"


def main(argv: list[str]) -> int:
    """`argv`: SPEC_JSON READY_FILE. Loop the model until killed."""
    from planner.graph.load import load_graph
    from runners.onnx_to_torch import convert

    spec, ready = json.loads(argv[0]), Path(argv[1])
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    bindings = ShapeBindings(
        dims=spec["dims"],
        batch=spec["batch"],
        input_shapes={k: tuple(v) for k, v in spec["input_shapes"].items()},
    )
    mg = load_graph(spec["path"], bindings)
    gm = convert(spec["path"], weights="random")
    args = whole_model_inputs(mg, list(gm.input_names), torch.device("cpu"))
    params = [p for p in gm.parameters() if p.requires_grad]
    first = True
    while True:
        with torch.enable_grad():
            outs = gm(*args)
        outs = outs if isinstance(outs, tuple | list) else (outs,)
        roots = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
        if roots and params:
            torch.autograd.backward(roots, [torch.ones_like(r) for r in roots], inputs=params)
        if first:
            ready.write_text("ready")
            first = False


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
