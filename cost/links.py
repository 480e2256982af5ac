"""What a link can move: bandwidth, latency and the alpha-beta transfer time.

The time to send `n` bytes over a link follows the alpha-beta (latency-bandwidth) model
of R. W. Hockney, "The communication challenge for MPP: Intel Paragon and Meiko CS-2",
Parallel Computing 20(3):389-398, 1994:

    t(n) = alpha + n / beta,   alpha = latency_us * 1e-6,
                               beta  = bandwidth_GBps * 1e9 * efficiency   (bytes/s)

and t(0) = 0 (nothing sent, nothing paid). A transfer normally runs beside the sender's
computation (a DMA engine moves the bytes); where the host CPU moves them (gloo over TCP
on CPU devices) the send also holds the sender for
`send_blocking_seconds(n) = k * send_blocking_us + n / send_blocking_GBps` (k tensors), a
figure `pipeplan calibrate` measures; 0 by default. `bandwidth_GBps` is the nominal peak **per
direction** in decimal GB/s; `efficiency` (0.85 by default) brings it to what measured
point-to-point transfers reach (80-90% of peak), so presets carry nominal figures.

Presets (`PRESETS`), per direction; latencies are end-to-end one-message latencies as a
communication library sees them (a few microseconds on NVLink and InfiniBand, tens over
TCP), rounded, and worth calibrating:

| preset   | GB/s | latency us | what                                         |
|----------|------|------------|----------------------------------------------|
| NVLink2  | 150  | 3          | V100 SXM2 (300 GB/s total)                   |
| NVLink3  | 300  | 3          | A100 SXM (600 GB/s total)                    |
| NVLink4  | 450  | 3          | H100 SXM (900 GB/s total)                    |
| PCIe4    | 32   | 5          | PCIe 4.0 x16                                 |
| PCIe5    | 64   | 5          | PCIe 5.0 x16                                 |
| IB-HDR   | 25   | 2          | InfiniBand HDR, 200 Gb/s                     |
| IB-NDR   | 50   | 2          | InfiniBand NDR, 400 Gb/s                     |
| 100GbE   | 12.5 | 30         | 100 Gb Ethernet over TCP                     |
| loopback | 5    | 20         | processes on one host (gloo over localhost)  |

`loopback` is for running pipeplan's runner as several processes on one machine (gloo
over TCP on localhost, tensors copied through host memory): 5 GB/s and 20 us are rough
figures for a small cloud VM and should be calibrated on the host.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from cost.errors import PipeplanError
from cost.fields import (
    Fraction,
    NonNegative,
    Positive,
    format_validation_error,
    lookup_name,
    normalise_name,
)


class LinkSpec(BaseModel):
    """A point-to-point link: nominal per-direction bandwidth, latency, efficiency."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = "custom"
    #: Nominal peak per direction, decimal GB/s.
    bandwidth_GBps: Positive
    #: One-message latency (alpha), microseconds; 0 allowed.
    latency_us: NonNegative
    #: Fraction of the nominal bandwidth a point-to-point transfer reaches.
    efficiency: Fraction = 0.85
    #: Host time a send holds the sending device's stream, per tensor, microseconds: 0 for
    #: DMA engines (NCCL, RDMA); on CPUs over gloo the caller copies into the socket.
    send_blocking_us: NonNegative = 0.0
    #: ... plus bytes at this rate (decimal GB/s); None: no per-byte part.
    send_blocking_GBps: Positive | None = None

    @property
    def effective_bytes_per_s(self) -> float:
        """beta of the alpha-beta model: bandwidth_GBps * 1e9 * efficiency."""
        return self.bandwidth_GBps * 1e9 * self.efficiency

    def transfer_seconds(self, nbytes: int) -> float:
        """Seconds to send `nbytes` one way: latency + nbytes / (bandwidth * efficiency)."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0 (got {nbytes})")
        if nbytes == 0:
            return 0.0
        return self.latency_us * 1e-6 + nbytes / self.effective_bytes_per_s

    def send_blocking_seconds(self, nbytes: int, tensors: int = 1) -> float:
        """Seconds a send of `tensors` tensors, `nbytes` in all, keeps the sender busy."""
        if nbytes <= 0:
            return 0.0
        per_byte = nbytes / (self.send_blocking_GBps * 1e9) if self.send_blocking_GBps else 0.0
        return tensors * self.send_blocking_us * 1e-6 + per_byte


def _preset(name: str, bandwidth: float, latency: float) -> LinkSpec:
    return LinkSpec(name=name, bandwidth_GBps=bandwidth, latency_us=latency)


#: Named links (see the module docstring for the figures and their meaning).
PRESETS: dict[str, LinkSpec] = {
    link.name: link
    for link in (
        _preset("NVLink2", 150, 3),
        _preset("NVLink3", 300, 3),
        _preset("NVLink4", 450, 3),
        _preset("PCIe4", 32, 5),
        _preset("PCIe5", 64, 5),
        _preset("IB-HDR", 25, 2),
        _preset("IB-NDR", 50, 2),
        _preset("100GbE", 12.5, 30),
        _preset("loopback", 5, 20),
    )
}

#: The "link" from a device to itself: infinite bandwidth, zero latency, so that
#: `transfer_seconds` is exactly 0 for any size. Built without validation (the validators
#: reject infinity in user input); it dumps to JSON with bandwidth null.
LOCAL_LINK: LinkSpec = LinkSpec.model_construct(
    name="local", bandwidth_GBps=math.inf, latency_us=0.0, efficiency=1.0
)

_BY_KEY = {normalise_name(n): n for n in PRESETS} | {
    "pcie40": "PCIe4",
    "pcie50": "PCIe5",
    "infinibandhdr": "IB-HDR",
    "infinibandndr": "IB-NDR",
    "hdr": "IB-HDR",
    "ndr": "IB-NDR",
    "localhost": "loopback",
}


def preset_link(name: str) -> LinkSpec:
    """The preset called `name` (case-insensitive; '-', '_' and spaces ignored)."""
    return lookup_name(name, PRESETS, _BY_KEY, "link preset")


def link_input(value: Any) -> Any:
    """What a user wrote for a link -> input for `LinkSpec.model_validate`.

    A preset name becomes the preset; `{like: PRESET, ...}` the preset's fields with the
    given ones overriding (the name stays the preset's unless given); a full dict and a
    `LinkSpec` pass through. Raises `PipeplanError` for an unknown preset.
    """
    if isinstance(value, LinkSpec):
        return value
    if isinstance(value, str):
        return preset_link(value)
    if isinstance(value, dict) and "like" in value:
        overrides = dict(value)
        return preset_link(overrides.pop("like")).model_dump() | overrides
    return value


def resolve_link(value: str | dict | LinkSpec) -> LinkSpec:
    """A `LinkSpec` from a preset name, `{bandwidth_GBps, latency_us, ...}` or
    `{like: PRESET, ...overrides}`. Bad input raises `PipeplanError` (one line)."""
    data = link_input(value)
    if isinstance(data, LinkSpec):
        return data
    if not isinstance(data, dict):
        raise PipeplanError(
            f"link must be a preset name or a mapping (got {type(value).__name__}: {value!r})"
        )
    try:
        return LinkSpec.model_validate(data)
    except ValidationError as exc:
        raise PipeplanError(f"invalid link spec: {format_validation_error(exc)}") from None
