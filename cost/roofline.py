"""Time of an operator on a device: the roofline model with efficiency factors.

    time = max(FLOPs / (peak(dtype) * efficiency(FLOPs)), bytes / (bandwidth * memory_eff))
           + launch overhead

(Williams, Waterman, Patterson, "Roofline: an insightful visual performance model for
multicore architectures", CACM 52(4), 2009.) Peak FLOP/s of matrix operators use the
plan's dtype (tensor cores for fp16/bf16/tf32); elementwise and normalisation operators
run on vector units at the fp32 rate. `efficiency(f)` grows with operator size: small
GEMMs do not fill the device (see `cost.devices` for the saturation curve).

Bytes in `OpCost` are counted at the model file's element types (mostly fp32); a plan in
bf16 or fp16 moves half as many bytes for floating-point tensors, so bytes scale by
`dtype_bytes / 4`. The backward pass reads saved activations and output gradients and
writes input and weight gradients: about twice the forward traffic, and two kernels.

Measured times win: on a device with a calibration profile (`DeviceSpec.profile`, see
`cost.profile`) that holds the operator's `signature` (`cost.signature.op_signature`)
measured at the plan's dtype, `forward_seconds` and `backward_seconds` return the measured
times; every other operator gets its family's fitted law (`cost.families`) where the
profile has one, else the roofline with the profile's fitted figures, plus the profile's
in-model cost per operator (`Profile.in_model`: inside a model and a pipeline rank every
operator, a zero-cost reshape too, takes longer than the isolated operators the laws were
fitted on).
"""

from __future__ import annotations

from cost.devices import DeviceSpec
from cost.opcost import OpCost
from cost.profile import family_fit, in_model_fit, measured_op

DTYPE_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2}
BACKWARD_TRAFFIC_FACTOR = 2.0
BACKWARD_KERNELS = 2


def dtype_bytes_scale(dtype: str) -> float:
    """Bytes at `dtype` relative to the fp32 tensors the costs were counted on."""
    return DTYPE_BYTES[dtype] / 4.0


def compute_seconds(flops: float, device: DeviceSpec, dtype: str, matrix: bool) -> float:
    """FLOPs over attainable FLOP/s, with the size-dependent efficiency."""
    if flops <= 0:
        return 0.0
    peak = device.peak_flops(dtype if matrix else "fp32")
    efficiency = device.efficiency(flops) if matrix else device.compute_efficiency
    return flops / (peak * efficiency)


def memory_seconds(nbytes: float, device: DeviceSpec) -> float:
    if nbytes <= 0:
        return 0.0
    return nbytes / (device.bandwidth_GBps * 1e9 * device.memory_efficiency)


def forward_seconds(
    cost: OpCost, device: DeviceSpec, dtype: str = "fp32", signature: str | None = None
) -> float:
    """Forward time of one operator for one micro-batch (measured if the device's
    profile holds `signature` at `dtype`)."""
    measured = measured_op(device.profile, signature, dtype)
    if measured is not None:
        return measured.forward_s
    return alone_forward_seconds(cost, device, dtype, signature) + _in_model(device, "forward")


def alone_forward_seconds(
    cost: OpCost, device: DeviceSpec, dtype: str = "fp32", signature: str | None = None
) -> float:
    """Forward time of an operator run alone: its family's law, else the roofline."""
    if cost.kind == "free":
        return 0.0
    fit = family_fit(device.profile, signature, dtype)
    if fit is not None and not cost.estimated:
        return fit.forward.seconds(cost.flops, cost.bytes_moved)
    matrix = cost.kind == "compute"
    compute = compute_seconds(cost.flops, device, dtype, matrix)
    memory = memory_seconds(cost.bytes_moved * dtype_bytes_scale(dtype), device)
    return max(compute, memory) + device.launch_overhead_us * 1e-6


def _in_model(device: DeviceSpec, direction: str) -> float:
    """Seconds an operator takes in a model beyond its isolated time (0 without a fit)."""
    fit = in_model_fit(device.profile)
    if fit is None:
        return 0.0
    return 1e-6 * (fit.forward_node_us if direction == "forward" else fit.backward_node_us)


def backward_seconds(
    cost: OpCost, device: DeviceSpec, dtype: str = "fp32", signature: str | None = None
) -> float:
    """Backward time (input and weight gradients) of one operator for one micro-batch
    (measured if the device's profile holds `signature` at `dtype`)."""
    measured = measured_op(device.profile, signature, dtype)
    if measured is not None:
        return measured.backward_s
    return alone_backward_seconds(cost, device, dtype, signature) + _in_model(device, "backward")


def alone_backward_seconds(
    cost: OpCost, device: DeviceSpec, dtype: str = "fp32", signature: str | None = None
) -> float:
    """Backward time of an operator run alone: its family's law, else the roofline."""
    if cost.kind == "free":
        return 0.0
    fit = family_fit(device.profile, signature, dtype)
    if fit is not None and not cost.estimated:
        return fit.backward.seconds(cost.backward_flops, cost.bytes_moved)
    matrix = cost.kind == "compute"
    # Each gradient product is a separate kernel of about forward size.
    kernels = BACKWARD_KERNELS if matrix and cost.backward_flops > cost.flops else 1
    per_kernel = cost.backward_flops / kernels
    compute = kernels * compute_seconds(per_kernel, device, dtype, matrix)
    memory = memory_seconds(
        BACKWARD_TRAFFIC_FACTOR * cost.bytes_moved * dtype_bytes_scale(dtype), device
    )
    return max(compute, memory) + kernels * device.launch_overhead_us * 1e-6


def weight_grad_fraction(cost: OpCost) -> float:
    """Share of backward time spent on weight gradients (the `W` step of zero-bubble)."""
    if cost.backward_flops <= 0:
        return 0.0
    return min(1.0, cost.weight_grad_flops / cost.backward_flops)
