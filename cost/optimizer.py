"""Time of one optimizer step over a stage's parameters (once per iteration, after the
pipeline has drained).

An update is elementwise and memory bound: per parameter it streams the weight, its
gradient and the optimizer state in and writes the weight and the state back
(Rajbhandari et al., "ZeRO", SC 2020, section 3.1 for the state; the roofline of Williams
et al., CACM 52(4), 2009, for the time):

=========  ==================  =================  ============  ===========
optimizer  read                write              bytes/param   ops/tensor
=========  ==================  =================  ============  ===========
sgd        w, g                w                  3 x 4 = 12    1
momentum   w, g, buf           w, buf             5 x 4 = 20    3
adam       w, g, m, v          w, m, v            7 x 4 = 28    10
=========  ==================  =================  ============  ===========

(fp32 master weights and state; `ops/tensor` is how many kernels PyTorch's per-tensor
loop dispatches, each paying the device's launch overhead). So

    t = tensors * ops * launch + params * bytes_per_param / (bandwidth * memory_efficiency)

A calibration profile (`cost.profile`) replaces both coefficients with the ones measured
on the device (`pipeplan calibrate` times `torch.optim` on sets of tensors and fits
`t = tensors * per_tensor + params * per_param`).
"""

from __future__ import annotations

from cost.devices import DeviceSpec
from cost.profile import measured_optimizer

#: optimizer -> (bytes streamed per parameter, kernels per parameter tensor)
UPDATE_TRAFFIC: dict[str, tuple[int, int]] = {
    "sgd": (12, 1),
    "momentum": (20, 3),
    "adam": (28, 10),
}


def optimizer_step_seconds(device: DeviceSpec, params: int, tensors: int, optimizer: str) -> float:
    """Seconds of one `optimizer` step over `params` parameters in `tensors` tensors."""
    if optimizer not in UPDATE_TRAFFIC:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    if params <= 0 or tensors <= 0:
        return 0.0
    fit = measured_optimizer(device.profile, optimizer)
    if fit is not None:
        return tensors * fit.per_tensor_us * 1e-6 + params * fit.per_param_ns * 1e-9
    nbytes, ops = UPDATE_TRAFFIC[optimizer]
    rate = device.bandwidth_GBps * 1e9 * device.memory_efficiency
    return tensors * ops * device.launch_overhead_us * 1e-6 + params * nbytes / rate
