"""What a device can do: peak compute per dtype, memory, bandwidth, efficiency factors.

`DeviceSpec` is a frozen pydantic model; `CATALOG` holds vendor figures for common GPUs
and a generic `CPU`; `resolve_device` turns what a user writes in a cluster file (a
catalog name, a full spec, or `{like: <catalog name>, <field>: <override>}`) into a spec.

Units, once for the whole module:

* compute in TFLOP/s (1e12 FLOP/s), **dense** (no 2:4 sparsity), tensor cores where the
  device has them;
* memory in decimal GB (1e9 bytes): an "80 GB" card is 80e9 bytes here, a little below
  what it really holds (80 GiB-class HBM), which errs on the safe side;
* bandwidth in decimal GB/s (1e9 bytes/s);
* launch overhead in microseconds.

Vendor figures are peaks nobody reaches. Three factors bring them down to earth, and all
three should be calibrated against measurements (`pipeplan calibrate` writes a profile;
a cluster entry `{profile: PROFILE.yaml}` uses its figures, see `cost.profile`):

* `compute_efficiency` -- the fraction of peak a large GEMM/convolution reaches (70-90%
  for cuBLAS/cuDNN on big shapes; 0.75 by default);
* `memory_efficiency` -- the fraction of bandwidth an elementwise kernel reaches (70-90%;
  0.8 by default);
* `half_efficiency_flops` -- small operators do not fill the device. An operator of
  `f` FLOPs reaches `efficiency(f) = compute_efficiency * f / (f + half_efficiency_flops)`
  of peak, i.e. half of `compute_efficiency` at `f == half_efficiency_flops`. The catalog
  values come from a simple occupancy argument: a GEMM fills a GPU once every streaming
  multiprocessor (SM) holds at least one 128x128 output tile with a reduction depth of
  about 256, i.e. `SMs * 128 * 128 * 256 * 2` FLOPs = `SMs * 8.4e6` (A100: 108 SMs ->
  0.9e9; H100 SXM: 132 SMs -> 1.1e9; T4: 40 SMs -> 0.34e9). Below that, whole SMs sit
  idle and wave quantisation bites. It is a heuristic in the spirit of the roofline model
  (Williams, Waterman, Patterson, CACM 2009), to be replaced by a calibration profile.

Dtype fallback (`DeviceSpec.peak_flops`): a dtype missing from `peak_tflops` uses the
rate of the next one in its chain, ``tf32 -> fp32`` and ``bf16 -> fp16 -> fp32``. So on
V100 and T4 (no TF32, no BF16 hardware) TF32 runs at the FP32 rate and BF16 is costed at
the FP16 tensor-core rate (125 and 65 TFLOP/s) -- optimistic, since real BF16 on those
cards is emulated: plan them in fp16. On GTX-1080 (no tensor cores, FP16 at 1/64 rate)
BF16 falls back to the 0.139 TFLOP/s FP16 figure.

Prices (`price_per_hour`) are *indicative* USD per device-hour, rough typical cloud
on-demand figures with no particular source; they only serve cost-efficiency what-ifs
and should be overridden with the user's own price.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from cost.errors import PipeplanError
from cost.fields import (
    Dtype,
    Fraction,
    Positive,
    format_validation_error,
    lookup_name,
    normalise_name,
)
from cost.profile import device_spec_input

#: Fallback chain of each dtype (documented in the module docstring).
DTYPE_FALLBACK: dict[str, tuple[str, ...]] = {
    "fp32": ("fp32",),
    "tf32": ("tf32", "fp32"),
    "fp16": ("fp16", "fp32"),
    "bf16": ("bf16", "fp16", "fp32"),
}

_DTYPE_ALIASES: dict[str, str] = {
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "f32": "fp32",
    "tf32": "tf32",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "f16": "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
}


# --------------------------------------------------------------------------- the model


class DeviceSpec(BaseModel):
    """One compute device. See the module docstring for units and the efficiency model.

    Required: `name`, `peak_tflops` (must hold at least `fp32`), `memory_GB`,
    `bandwidth_GBps`. Everything else has a default.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str
    #: Dense peak TFLOP/s per dtype; missing dtypes fall back (tf32->fp32, bf16->fp16->fp32).
    peak_tflops: dict[Dtype, Positive]
    #: Device memory, decimal GB (1e9 bytes).
    memory_GB: Positive
    #: Memory bandwidth, decimal GB/s.
    bandwidth_GBps: Positive
    #: Fixed cost per operator (kernel launch, framework dispatch), microseconds.
    #: 5 for GPUs (the default), 2 for the catalog CPU.
    launch_overhead_us: Positive = 5.0
    #: Max fraction of peak reached by large GEMM/conv.
    compute_efficiency: Fraction = 0.75
    #: Fraction of bandwidth reached by elementwise kernels.
    memory_efficiency: Fraction = 0.8
    #: FLOPs at which an operator reaches half of `compute_efficiency`.
    half_efficiency_flops: Positive = 1e9
    #: Indicative USD per device-hour (typical cloud on-demand; no particular source).
    price_per_hour: Positive | None = None
    #: Absolute path of the calibration profile the figures come from (`cost.profile`);
    #: its measured operator times replace the roofline for operators it holds.
    profile: str | None = None
    #: First 16 hex digits of the profile file's SHA-256 when the figures were read: part
    #: of the spec, so cached plans (`planner.whatif.cache`) never outlive a re-calibration.
    profile_sha256: str | None = None
    #: onnxruntime execution providers for this device's stages under `run --engine
    #: onnxruntime`, in order of preference (`CUDA`, `TensorRT`, `OpenVINO`, ... or full
    #: names); empty: CPU. Planning ignores it (`runners.ort.providers`).
    providers: tuple[str, ...] = ()

    @field_validator("peak_tflops")
    @classmethod
    def _needs_fp32(cls, value: dict[str, float]) -> dict[str, float]:
        if "fp32" not in value:
            raise PydanticCustomError(
                "value_error",
                "an fp32 entry is required (got {got})",
                {"got": "{" + ", ".join(sorted(value)) + "}"},
            )
        return value

    @field_validator("name")
    @classmethod
    def _non_empty_name(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("value_error", "must not be empty", {})
        return value

    @property
    def memory_bytes(self) -> int:
        """Device memory in bytes (decimal: memory_GB * 1e9)."""
        return int(round(self.memory_GB * 1e9))

    def peak_flops(self, dtype: str = "fp32") -> float:
        """Dense peak FLOP/s for `dtype`, following the fallback chain.

        `dtype` is one of fp32, tf32, fp16, bf16 (also float32, float16, half, bfloat16).
        """
        key = _DTYPE_ALIASES.get(dtype.lower()) if isinstance(dtype, str) else None
        if key is None:
            raise PipeplanError(
                f"unknown dtype {dtype!r} for device {self.name}: use fp32, tf32, fp16 or bf16"
            )
        for candidate in DTYPE_FALLBACK[key]:
            if candidate in self.peak_tflops:
                return self.peak_tflops[candidate] * 1e12
        raise AssertionError("fp32 is always present")  # enforced by _needs_fp32

    def efficiency(self, flops: float) -> float:
        """Fraction of peak an operator of `flops` FLOPs reaches (0 for 0 FLOPs)."""
        if flops <= 0:
            return 0.0
        return self.compute_efficiency * flops / (flops + self.half_efficiency_flops)


# --------------------------------------------------------------------------- catalog


def _gpu(name: str, tflops: dict[str, float], mem: float, bw: float, sms: int, price: float):
    return DeviceSpec(
        name=name,
        peak_tflops=tflops,
        memory_GB=mem,
        bandwidth_GBps=bw,
        half_efficiency_flops=round(sms * 128 * 128 * 256 * 2, -7),
        price_per_hour=price,
    )


# Figures: vendor spec sheets, dense (see /work/shared/context.md). FP16/BF16 are tensor-core
# rates. GeForce cards (RTX-3090, RTX-4090) are listed at their FP16-accumulate tensor
# rate; with FP32 accumulation (PyTorch's default) they run at half of it.
_ENTRIES = [
    #     name           fp32/tf32/fp16/bf16 TFLOP/s                        GB   GB/s SMs  $/h
    _gpu("V100-16GB", {"fp32": 15.7, "fp16": 125}, 16, 900, 80, 2.5),
    _gpu("V100-32GB", {"fp32": 15.7, "fp16": 125}, 32, 900, 80, 3.0),
    _gpu("A100-40GB", {"fp32": 19.5, "tf32": 156, "fp16": 312, "bf16": 312}, 40, 1555, 108, 3.0),
    _gpu("A100-80GB", {"fp32": 19.5, "tf32": 156, "fp16": 312, "bf16": 312}, 80, 2039, 108, 4.0),
    _gpu("H100-80GB", {"fp32": 67, "tf32": 495, "fp16": 989, "bf16": 989}, 80, 3350, 132, 7.0),
    _gpu("H100-PCIe", {"fp32": 51, "tf32": 378, "fp16": 756, "bf16": 756}, 80, 2000, 114, 5.0),
    _gpu("H200", {"fp32": 67, "tf32": 495, "fp16": 989, "bf16": 989}, 141, 4800, 132, 8.0),
    _gpu("L4", {"fp32": 30.3, "tf32": 60, "fp16": 121, "bf16": 121}, 24, 300, 58, 0.8),
    _gpu("T4", {"fp32": 8.1, "fp16": 65}, 16, 320, 40, 0.5),
    _gpu("RTX-3090", {"fp32": 35.6, "tf32": 35.6, "fp16": 71, "bf16": 71}, 24, 936, 82, 0.5),
    _gpu("RTX-4090", {"fp32": 82.6, "tf32": 82.6, "fp16": 165, "bf16": 165}, 24, 1008, 128, 0.7),
    # Pascal: no tensor cores, FP16 arithmetic at 1/64 of the FP32 rate (8.9 / 64).
    _gpu("GTX-1080", {"fp32": 8.9, "fp16": 0.139}, 8, 320, 20, 0.2),
    # A generic 2-vCPU cloud VM host (one physical core with two hyperthreads, AVX2 FMA).
    # Chosen figures, NOT measurements: 50 GFLOP/s fp32 (no fp16/bf16 entry: they fall
    # back to fp32), 10 GB/s memory bandwidth, 16 GB RAM, 2 us per-op overhead, and a
    # half-efficiency point of 1e7 FLOPs (a 64x64 tile per core with depth ~600 keeps
    # the FMA units busy). Calibrate it on the real host before trusting any plan.
    DeviceSpec(
        name="CPU",
        peak_tflops={"fp32": 0.05},
        memory_GB=16,
        bandwidth_GBps=10,
        launch_overhead_us=2.0,
        half_efficiency_flops=1e7,
        price_per_hour=0.1,
    ),
]

#: Catalog of known devices, by canonical name.
CATALOG: dict[str, DeviceSpec] = {d.name: d for d in _ENTRIES}

#: Extra accepted spellings (after `normalise_name`) -> catalog name.
_ALIASES: dict[str, str] = {
    "h100sxm": "H100-80GB",
    "h100sxm80gb": "H100-80GB",
    "h100pcie80gb": "H100-PCIe",
    "h200sxm": "H200",
    "h200141gb": "H200",
    "gtx1080": "GTX-1080",
}
_BY_KEY: dict[str, str] = {normalise_name(n): n for n in CATALOG} | _ALIASES


def catalog_device(name: str) -> DeviceSpec:
    """The catalog entry for `name` (case-insensitive; '-', '_' and spaces ignored)."""
    return lookup_name(name, CATALOG, _BY_KEY, "device")


def device_input(value: Any, base_dir: str | None = None) -> Any:
    """What a user wrote for one device -> input for `DeviceSpec.model_validate`.

    A catalog name becomes that entry; `{like: NAME, ...}` becomes the entry's fields with
    the given ones overriding (a `peak_tflops` override is merged dtype by dtype);
    `{profile: PATH, ...}` becomes the calibration profile's measured figures with the
    given ones overriding and `profile` set to the profile's absolute path (a relative
    PATH resolves against `base_dir`, the cluster file's folder, else the working
    directory; see `cost.profile`); a full spec (a dict without `like` or `profile`) and
    a `DeviceSpec` pass through. Raises `PipeplanError` for an unknown catalog name or an
    unreadable profile.
    """
    if isinstance(value, DeviceSpec):
        return value
    if isinstance(value, str):
        return catalog_device(value)
    if isinstance(value, dict) and "profile" in value and value["profile"] is not None:
        return device_spec_input(value, base_dir)
    if isinstance(value, dict) and "like" in value:
        overrides = dict(value)
        base = catalog_device(overrides.pop("like")).model_dump()
        if isinstance(overrides.get("peak_tflops"), dict):
            overrides["peak_tflops"] = base["peak_tflops"] | overrides["peak_tflops"]
        return base | overrides
    return value


def resolve_device(value: str | dict | DeviceSpec, base_dir: str | None = None) -> DeviceSpec:
    """A `DeviceSpec` from a catalog name, a full spec dict, `{like: NAME, ...overrides}`
    or `{profile: PATH, ...overrides}` (relative to `base_dir`).

    >>> resolve_device("a100-80gb").memory_GB
    80.0
    >>> resolve_device({"like": "A100-80GB", "memory_GB": 40}).memory_GB
    40.0

    Bad input raises `PipeplanError` with a one-line message.
    """
    data = device_input(value, base_dir)
    if isinstance(data, DeviceSpec):
        return data
    if not isinstance(data, dict):
        raise PipeplanError(
            f"device must be a catalog name or a mapping (got {type(value).__name__}: {value!r})"
        )
    try:
        return DeviceSpec.model_validate(data)
    except ValidationError as exc:
        raise PipeplanError(f"invalid device spec: {format_validation_error(exc)}") from None
