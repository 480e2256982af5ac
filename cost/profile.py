"""Calibration profiles: what `pipeplan calibrate` measured on one device (no torch here).

A profile (YAML) holds the cost-model figures fitted from microbenchmarks, the measured
point-to-point link between two processes on the host, and optionally the measured
forward and backward time of every distinct operator of some models, keyed by the
operator's `signature` (`cost.signature.op_signature`)::

    schema_version: 1
    device: {name, peak_tflops: {fp32, bf16, ...}, memory_GB, bandwidth_GBps,
             launch_overhead_us, compute_efficiency, memory_efficiency, half_efficiency_flops}
    link: {bandwidth_GBps, latency_us, efficiency: 1.0, backend: gloo,
           send_blocking_us, send_blocking_GBps}   # CPU time a send holds its caller
    optimizer: {adam: {per_tensor_us, per_param_ns}, sgd: ..., momentum: ...}
    ops: {<signature>: {op_type, forward_s, backward_s, dtype: fp32, model}}
    families: {<family>: {forward: {fixed_us, gflops, gbps}, backward: {...}, dtype,
               points, median_error, max_error, held_out_error}}   # cost.families
    in_model: {forward_node_us, backward_node_us, source, models: {<model>: [f, b]},
               held_out_error: {<model>: error}}   # runners.calibrate.in_model
    overhead: {forward_call_s, backward_call_s}   # subtracted from every op time
    fit: {...}                                     # how the figures were fitted, residuals
    measurements: {gemm: [...], conv: [...], elementwise: [...], pingpong: [...], ...}
    machine: {hostname, processor, cpus, ...}
    threads: 1
    torch_version: 2.13.0+cpu
    created: 2025-01-01T00:00:00+00:00
    note: free text

Where profiles are used:

* a cluster file's device entry `{profile: cpu.yaml}` (`count`, and any `DeviceSpec`
  field as an override, allowed) becomes a `DeviceSpec` with the profile's `device`
  figures, `profile` set to the profile's absolute path and `profile_sha256` to a digest
  of its content (so a plan cache keyed on the cluster sees a re-calibration)
  (`device_spec_input`);
* a link `{profile: cpu.yaml}` becomes the profile's measured link (`link_spec_input`);
* `cost.roofline` uses a profile's measured time for an operator whose signature it
  holds, at the dtype it was measured in (`measured_op`), instead of the roofline; an
  operator it does not hold is priced by its family's fitted law (`family_fit`,
  `cost.families`) where the profile has one, and only then by the roofline; both of
  those (and zero-cost operators) pay the profile's `in_model` cost per operator where it
  has one (`in_model_fit`);
* `cost.optimizer` uses its measured optimizer step (`measured_optimizer`).

Relative profile paths resolve against the cluster file's folder. Loading is cached on
(path, modification time, size). Errors are one line (`PipeplanError`).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cost.errors import PipeplanError
from cost.families import family_of
from cost.fields import Dtype, Fraction, NonNegative, Positive, format_validation_error
from cost.files import parse_yaml, read_text, write_text_atomic

PROFILE_SCHEMA_VERSION = 1


class ProfileDevice(BaseModel):
    """The device figures fitted by the calibrator (the `DeviceSpec` fields it can measure)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str
    peak_tflops: dict[Dtype, Positive]
    memory_GB: Positive
    bandwidth_GBps: Positive
    launch_overhead_us: Positive
    compute_efficiency: Fraction
    memory_efficiency: Fraction
    half_efficiency_flops: Positive


class ProfileLink(BaseModel):
    """Point-to-point transfers between two processes on the host, alpha-beta fitted."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    bandwidth_GBps: Positive
    latency_us: NonNegative
    efficiency: Fraction = 1.0
    backend: str | None = None
    #: Host time a send keeps its caller busy (gloo on CPUs copies into the socket on the
    #: calling thread): `send_blocking_us` per tensor + bytes / `send_blocking_GBps`.
    send_blocking_us: NonNegative = 0.0
    send_blocking_GBps: Positive | None = None


class OptimizerFit(BaseModel):
    """One optimizer step measured on the device: tensors * per_tensor + params * per_param."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    per_tensor_us: NonNegative
    per_param_ns: NonNegative


class OpTiming(BaseModel):
    """One operator signature measured on the device, per call (one micro-batch)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    op_type: str
    forward_s: NonNegative
    backward_s: NonNegative
    dtype: Dtype = "fp32"
    #: the operator timed alone (forward_s and backward_s include the context correction)
    isolated_forward_s: NonNegative | None = None
    isolated_backward_s: NonNegative | None = None
    #: the model file the signature was first met in (information only)
    model: str | None = None


class FamilyLaw(BaseModel):
    """One direction (forward or backward) of a family's fitted time law
    `t = fixed + flops / (gflops 1e9) + bytes / (gbps 1e9)` (`cost.families`); a rate of 0
    means the term was not needed (its contribution is 0)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    fixed_us: NonNegative = 0.0
    gflops: NonNegative = 0.0
    gbps: NonNegative = 0.0

    def seconds(self, flops: float, nbytes: float) -> float:
        t = self.fixed_us * 1e-6
        if self.gflops > 0:
            t += flops / (self.gflops * 1e9)
        if self.gbps > 0:
            t += nbytes / (self.gbps * 1e9)
        return t


class FamilyFit(BaseModel):
    """A family's forward and backward laws, fitted to a microbenchmark sweep, with their
    errors: `median_error` / `max_error` over the sweep's points, `held_out_error` the
    median error on points left out of the fit (every third shape)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    forward: FamilyLaw
    backward: FamilyLaw
    dtype: Dtype = "fp32"
    points: int = 0
    median_error: NonNegative = 0.0
    max_error: NonNegative = 0.0
    held_out_error: NonNegative = 0.0


class InModelFit(BaseModel):
    """What operators cost inside a model (and a pipeline rank) beyond their isolated time:
    every operator the profile prices by a family law or the roofline (and every
    zero-cost one: a reshape, a view) pays `forward_node_us` forward and `backward_node_us`
    backward per micro-batch (measured operators carry their own model's correction).
    Fitted by `runners.calibrate.in_model` as the median over `models` (key -> [forward,
    backward] excess per operator, us: measured in-model time less the sum of isolated
    operator times, over the operators); `held_out_error`: per model, the relative error
    of its forward + backward time predicted from the family laws and the other models'
    medians (leave one model out)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    forward_node_us: NonNegative = 0.0
    backward_node_us: NonNegative = 0.0
    #: "pipeline": from pipeline probes; "whole": from whole-model timings only
    source: str = "pipeline"
    models: dict[str, list[float]] = Field(default_factory=dict)
    held_out_error: dict[str, float] = Field(default_factory=dict)


class Profile(BaseModel):
    """A calibration profile; see the module docstring."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    schema_version: int = PROFILE_SCHEMA_VERSION
    #: what timed the operators: torch (the torch runner's converted graphs) or
    #: onnxruntime (`run --engine onnxruntime`; `runners.calibrate.ort_ops`)
    engine: str = "torch"
    device: ProfileDevice
    link: ProfileLink | None = None
    ops: dict[str, OpTiming] = Field(default_factory=dict)
    optimizer: dict[str, OptimizerFit] = Field(default_factory=dict)
    families: dict[str, FamilyFit] = Field(default_factory=dict)
    in_model: InModelFit | None = None
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    overhead: dict[str, float] = Field(default_factory=dict)
    fit: dict[str, Any] = Field(default_factory=dict)
    measurements: dict[str, Any] = Field(default_factory=dict)
    machine: dict[str, Any] = Field(default_factory=dict)
    threads: int = Field(default=1, ge=1)
    torch_version: str = ""
    created: str = ""
    note: str = ""


# ------------------------------------------------------------------ load and save


def is_profile_document(data: Any) -> bool:
    """Whether parsed YAML looks like a profile (a `device` mapping, no cluster keys)."""
    return (
        isinstance(data, dict)
        and isinstance(data.get("device"), dict)
        and "nodes" not in data
        and "devices" not in data
    )


def profile_from_dict(data: Any, source: str = "<dict>") -> Profile:
    """Validate a parsed profile; one-line `PipeplanError` naming `source`."""
    if not isinstance(data, dict):
        got = "an empty document" if data is None else type(data).__name__
        raise PipeplanError(f"invalid profile {source}: expected a mapping (got {got})")
    version = data.get("schema_version", PROFILE_SCHEMA_VERSION)
    if version != PROFILE_SCHEMA_VERSION:
        raise PipeplanError(
            f"profile {source} has schema_version {version!r}; this pipeplan reads "
            f"{PROFILE_SCHEMA_VERSION}: calibrate again"
        )
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise PipeplanError(f"invalid profile {source}: {format_validation_error(exc)}") from None


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read a profile (YAML); cached on (absolute path, mtime, size). One-line errors."""
    p = Path(os.path.abspath(path))
    try:
        st = p.stat()
    except FileNotFoundError:
        raise PipeplanError(f"profile file not found: {path}") from None
    except OSError as exc:
        raise PipeplanError(f"cannot read profile {path}: {exc.strerror or exc}") from None
    if not p.is_file():
        raise PipeplanError(f"profile path is not a file: {path}")
    return _load_cached(str(p), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _load_cached(path: str, _mtime_ns: int, _size: int) -> Profile:
    data = parse_yaml(read_text(path, "profile file"), f"profile {path}")
    return profile_from_dict(data, source=path)


def profile_to_yaml(profile: Profile, header: str = "") -> str:
    """The profile as YAML (keys in model order; floats as Python writes them)."""
    data = profile.model_dump(mode="json", exclude_none=True)
    body = yaml.safe_dump(data, sort_keys=False, width=100, allow_unicode=True)
    if header:
        body = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + body
    return body


def save_profile(profile: Profile, path: str | os.PathLike[str], header: str = "") -> None:
    """Write `profile` atomically (temporary file, then rename)."""
    write_text_atomic(path, profile_to_yaml(profile, header))


# ------------------------------------------------------------------ use in clusters


def resolve_profile_path(value: Any, base_dir: str | os.PathLike[str] | None) -> str:
    """Absolute path of a profile reference (relative ones against `base_dir`, else cwd)."""
    if not isinstance(value, str | os.PathLike) or not str(value).strip():
        raise PipeplanError(f"profile must be a file path (got {value!r})")
    p = Path(os.path.expanduser(str(value)))
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return os.path.abspath(p)


_SPEC_REQUIRED = ("peak_tflops", "memory_GB", "bandwidth_GBps")


def device_spec_input(value: dict, base_dir: str | os.PathLike[str] | None = None) -> dict:
    """`{profile: PATH, <DeviceSpec field>: override, ...}` -> DeviceSpec input.

    The profile's fitted `device` figures, then the entry's other fields over them;
    `profile` becomes the absolute path. A dict that already holds a full spec
    (`peak_tflops`, `memory_GB` and `bandwidth_GBps`: a device dumped in a plan) keeps its
    figures and only has its path made absolute, so plans load where the profile is absent.
    """
    entry = dict(value)
    if "like" in entry:
        raise PipeplanError("give either 'like' or 'profile' in a device entry, not both")
    path = resolve_profile_path(entry.pop("profile"), base_dir)
    if all(k in entry for k in _SPEC_REQUIRED):
        return entry | {"profile": path}
    measured = load_profile(path).device.model_dump()
    if isinstance(entry.get("peak_tflops"), dict):
        entry["peak_tflops"] = measured["peak_tflops"] | entry["peak_tflops"]
    return measured | entry | {"profile": path, "profile_sha256": profile_digest(path)}


def profile_digest(path: str | os.PathLike[str]) -> str:
    """First 16 hex digits of the SHA-256 of a profile file (cached like `load_profile`)."""
    p = Path(os.path.abspath(path))
    st = p.stat()
    return _digest_cached(str(p), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _digest_cached(path: str, _mtime_ns: int, _size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def link_spec_input(value: dict, base_dir: str | os.PathLike[str] | None = None) -> dict:
    """`{profile: PATH, <LinkSpec field>: override}` -> LinkSpec input: the measured link."""
    entry = dict(value)
    if "like" in entry:
        raise PipeplanError("give either 'like' or 'profile' in a link, not both")
    path = resolve_profile_path(entry.pop("profile"), base_dir)
    link = load_profile(path).link
    if link is None:
        raise PipeplanError(f"profile {path} has no measured link: calibrate it again")
    return {
        "name": f"measured ({Path(path).name})",
        "bandwidth_GBps": link.bandwidth_GBps,
        "latency_us": link.latency_us,
        "efficiency": link.efficiency,
        "send_blocking_us": link.send_blocking_us,
        "send_blocking_GBps": link.send_blocking_GBps,
    } | entry


# ------------------------------------------------------------------ use in pricing


def measured_op(profile_path: str | None, signature: str | None, dtype: str) -> OpTiming | None:
    """The profile's timing of `signature` at `dtype`, or None (no profile, op or file)."""
    if not profile_path or not signature:
        return None
    try:
        profile = load_profile(profile_path)
    except PipeplanError:
        return None  # a plan's device whose profile is not on this machine: roofline only
    timing = profile.ops.get(signature)
    if timing is None or timing.dtype != dtype:
        return None
    return timing


def family_fit(profile_path: str | None, signature: str | None, dtype: str) -> FamilyFit | None:
    """The profile's fit of the family of `signature` (`cost.families`) at `dtype`, or
    None (no profile, no fit for that family, another dtype)."""
    if not profile_path or not signature:
        return None
    try:
        profile = load_profile(profile_path)
    except PipeplanError:
        return None
    if not profile.families:
        return None
    fit = profile.families.get(family_of(signature) or "")
    if fit is None or fit.dtype != dtype:
        return None
    return fit


def in_model_fit(profile_path: str | None) -> InModelFit | None:
    """The profile's in-model cost per operator, or None (no profile, none fitted, no file)."""
    if not profile_path:
        return None
    try:
        return load_profile(profile_path).in_model
    except PipeplanError:
        return None


def measured_optimizer(profile_path: str | None, optimizer: str) -> OptimizerFit | None:
    """The profile's measured step of `optimizer`, or None (no profile, fit or file)."""
    if not profile_path:
        return None
    try:
        profile = load_profile(profile_path)
    except PipeplanError:
        return None
    return profile.optimizer.get(optimizer)
