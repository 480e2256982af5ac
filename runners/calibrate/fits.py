"""The fits of a calibration (numpy only): measured points -> the profile's figures.

Every fit is least squares on *relative* error (rows divided by the measured time, so small
and large sizes weigh alike); `fit_line_relative` fits `t = a + b x`.

* GEMM (`fit_device`): the roofline prices a matrix operator of `f` FLOPs at
  `f / (peak * efficiency(f)) + launch`, with
  `efficiency(f) = compute_efficiency * f / (f + half_efficiency_flops)`; that is
  `t(f) = f / R + h / R + launch` with `R = peak * compute_efficiency`: a straight line in
  `f`. We fit `t = c0 + f / R` to the square GEMMs, then set
  `half_efficiency_flops = (c0 - plain_launch) * R` (the intercept beyond one plain
  dispatch, in FLOPs; at least 1). Timings only identify `R`, not how it splits into peak
  and efficiency: with `peak_tflops` given (a vendor figure), `compute_efficiency =
  R / peak`; otherwise we fix `compute_efficiency = 0.9` (the top of the 70-90% band
  cost.devices assumes for large GEMMs) and `peak = R / 0.9`. Every predicted time depends
  on `R` only, so this convention changes no prediction. Half types: the same fit (or
  the best rate when fewer than two sizes ran) gives their `peak_tflops` entry. Skinny
  GEMMs and convolutions are compared with the fitted roofline (measured / predicted), as
  a check; not fitted.
* Elementwise (`fit_device`): `bandwidth_GBps` is the streaming rate of
  `torch.add(a, b, out=c)` (3 x 4 bytes per element) at the largest size; the roofline's
  effective rate `B = bandwidth * memory_efficiency` is fitted as `t = c + bytes / B` on
  allocating adds (`a + b`, what a model's operators do) of tensors of 1 MiB or more
  (smaller ones are launch-bound); `memory_efficiency = B / bandwidth` (`bandwidth` is
  raised to `B` when caches make `B` larger, so the efficiency stays in (0, 1]).
* Link (`fit_link`): alpha-beta, `one_way_s = latency + bytes / bandwidth`, on the loaded
  one-way time (`runners.calibrate.link.loaded_one_way`): `link: {bandwidth_GBps,
  latency_us, efficiency: 1.0}`; the quiet fit is in `fit.link.quiet`. The time `isend`
  holds its caller while both processes compute is fitted too
  (`send_blocking_us + bytes / send_blocking_GBps`): the simulator holds a sending device
  that long (`planner.simulate.engine`).
* Optimizer step (`fit_optimizer`): `t = tensors * per_tensor + params * per_param` per
  optimizer: `optimizer: {adam: {per_tensor_us, per_param_ns}, ...}`, the step tail of
  every iteration (`cost.optimizer`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cost.profile import OptimizerFit, ProfileDevice, ProfileLink
from runners.calibrate.link import loaded_one_way

#: compute_efficiency used when no vendor peak is given (see the module docstring).
DEFAULT_COMPUTE_EFFICIENCY = 0.9

#: Elementwise adds of at least this many elements (1 MiB of fp32) fit the bandwidth.
ELEMENTWISE_FIT_MIN_NUMEL = 1 << 18


def fit_line_relative(x: Sequence[float], t: Sequence[float]) -> tuple[float, float]:
    """Least squares `t = a + b x` on relative error (each row divided by t): (a, b).

    With a negative intercept the line is refitted through the origin (a = 0).
    """
    x_arr = np.asarray(x, dtype=float)
    t_arr = np.asarray(t, dtype=float)
    if len(x_arr) == 0:
        raise ValueError("no points to fit")
    w = 1.0 / t_arr
    if len(x_arr) >= 2:
        a_mat = np.stack([w, x_arr * w], axis=1)
        (a, b), *_ = np.linalg.lstsq(a_mat, np.ones_like(t_arr), rcond=None)
        if a >= 0 and b > 0:
            return float(a), float(b)
    b = float(np.sum(x_arr * w) / np.sum((x_arr * w) ** 2))  # through the origin
    return 0.0, b


def relative_errors(predicted: Sequence[float], measured: Sequence[float]) -> list[float]:
    return [(p - m) / m for p, m in zip(predicted, measured, strict=True)]


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    errs = relative_errors(predicted, measured)
    return float(100.0 * np.mean(np.abs(errs))) if errs else 0.0


def fit_optimizer(points: list[dict]) -> tuple[dict[str, OptimizerFit], dict]:
    """Per optimizer: `t = tensors * per_tensor + params * per_param`, least squares on
    relative error (rows divided by the measured time), coefficients kept >= 0."""
    fits, report = {}, {}
    for kind in dict.fromkeys(p["optimizer"] for p in points):
        pts = [p for p in points if p["optimizer"] == kind]
        a = np.array([[p["tensors"], p["tensors"] * p["numel"]] for p in pts], dtype=float)
        t = np.array([p["seconds"] for p in pts])
        coef, *_ = np.linalg.lstsq(a / t[:, None], np.ones(len(pts)), rcond=None)
        per_tensor, per_param = (max(0.0, float(c)) for c in coef)
        if per_param == 0.0:  # refit the per-tensor part alone
            per_tensor = float(np.sum(a[:, 0] / t) / np.sum((a[:, 0] / t) ** 2))
        predicted = a @ np.array([per_tensor, per_param])
        fits[kind] = OptimizerFit(
            per_tensor_us=float(f"{per_tensor * 1e6:.5g}"),
            per_param_ns=float(f"{per_param * 1e9:.5g}"),
        )
        report[kind] = {"mape_percent": round(mape(list(predicted), list(t)), 2)}
    return fits, {"model": "t = tensors * per_tensor + params * per_param"} | report


def fit_link(points: list[dict], backend: str) -> tuple[ProfileLink, dict]:
    """The link (`ProfileLink`) and its fit report, from the ping-pong's points."""
    sizes = [p["bytes"] for p in points]
    quiet = [p["one_way_s"] for p in points]
    loaded = [loaded_one_way(p) for p in points]
    alpha, inv_beta = fit_line_relative(sizes, loaded)
    link = ProfileLink(
        bandwidth_GBps=1.0 / inv_beta / 1e9, latency_us=alpha * 1e6, efficiency=1.0, backend=backend
    )
    posts = [p for p in points if "post_busy_s" in p]
    send_fit = None
    if len(posts) >= 2:
        # the time isend holds its caller while both processes compute: the runner's SEND
        s_alpha, s_inv_beta = fit_line_relative(
            [p["bytes"] for p in posts], [p["post_busy_s"] for p in posts]
        )
        s_alpha = max(0.0, s_alpha)
        link = link.model_copy(
            update={
                "send_blocking_us": s_alpha * 1e6,
                "send_blocking_GBps": 1.0 / s_inv_beta / 1e9 if s_inv_beta > 0 else None,
            }
        )
        send_fit = {
            "model": "isend blocking (both processes computing) = send_blocking_us + bytes / send_blocking_GBps",
            "mape_percent": round(
                mape(
                    [s_alpha + p["bytes"] * max(s_inv_beta, 0.0) for p in posts],
                    [p["post_busy_s"] for p in posts],
                ),
                2,
            ),
        }
    q_alpha, q_inv_beta = fit_line_relative(sizes, quiet)
    fit = {
        "model": "one_way_s = latency + bytes / bandwidth (relative least squares) on the "
        "loaded one-way time: quiet ping-pong + extra isend blocking while both processes compute",
        "mape_percent": round(mape([alpha + n * inv_beta for n in sizes], loaded), 2),
        "quiet": {
            "latency_us": round(q_alpha * 1e6, 2),
            "bandwidth_GBps": round(1.0 / q_inv_beta / 1e9, 4),
            "mape_percent": round(mape([q_alpha + n * q_inv_beta for n in sizes], quiet), 2),
        },
    }
    if send_fit is not None:
        fit["send_blocking"] = send_fit
    return link, fit


def fit_device(
    results: dict, peak_tflops: float | None, name: str, memory_gb: float
) -> tuple[ProfileDevice, dict]:
    """The device figures (`ProfileDevice` named `name`, with `memory_gb`) and their fit
    report, from the microbenchmarks' points (`results`; see the module docstring)."""
    launch = results["launch"]
    plain_s = launch["plain_s"]
    # --- GEMM: t = c0 + f / R on the square sizes, relative least squares
    square = results["gemm_fp32"]
    c0, inv_rate = fit_line_relative([p["flops"] for p in square], [p["seconds"] for p in square])
    rate = 1.0 / inv_rate
    if peak_tflops is not None:
        ce = min(1.0, rate / (peak_tflops * 1e12))
        peak = max(peak_tflops * 1e12, rate)
    else:
        ce = DEFAULT_COMPUTE_EFFICIENCY
        peak = rate / ce
    half_eff = max(1.0, (c0 - plain_s) * rate)
    warnings = []
    if c0 <= plain_s:
        warnings.append(
            "GEMM intercept at or below one plain dispatch (noisy timings?): "
            "half_efficiency_flops set to 1"
        )
    gemm_pred = [(p["flops"] + half_eff) / rate + plain_s for p in square]
    # --- elementwise: effective B from allocating adds of tensors >= 1 MiB (smaller ones
    # are launch-bound); bandwidth = the streaming rate at the largest size
    elem = results["elementwise"]
    big = [p for p in elem if p["numel"] >= ELEMENTWISE_FIT_MIN_NUMEL] or elem[-1:]
    c_mem, inv_b = fit_line_relative([p["bytes"] for p in big], [p["allocating_s"] for p in big])
    effective = 1.0 / inv_b
    streaming = elem[-1]["bytes"] / elem[-1]["streaming_s"]
    bandwidth = max(streaming, effective)
    mem_eff = effective / bandwidth
    elem_pred = [c_mem + p["bytes"] / effective for p in big]

    def roofline(flops: float, nbytes: float) -> float:
        return max((flops + half_eff) / rate, nbytes / effective) + plain_s

    skinny = results["gemm_skinny"]
    skinny_pred = [
        roofline(p["flops"], 4 * (p["m"] * p["k"] + p["k"] * p["n"] + p["m"] * p["n"]))
        for p in skinny
    ]
    conv = results["conv"]
    for p in conv:
        nbytes = 4 * (p["n"] * p["c"] * p["hw"] ** 2 * 2 + p["k"] * p["c"] * p["kernel"] ** 2)
        p["predicted_s"] = roofline(p["flops"], nbytes)
        p["measured_over_predicted"] = round(p["seconds"] / p["predicted_s"], 3)
    half_peaks, half_fits = _fit_half(results, ce)
    peaks = {"fp32": peak / 1e12} | half_peaks
    device = ProfileDevice(
        name=name,
        peak_tflops={k: float(f"{v:.6g}") for k, v in peaks.items()},
        memory_GB=float(f"{memory_gb:.4g}"),
        bandwidth_GBps=float(f"{bandwidth / 1e9:.5g}"),
        launch_overhead_us=float(f"{launch['autograd_s'] * 1e6:.4g}"),
        compute_efficiency=ce,
        memory_efficiency=float(f"{mem_eff:.4g}"),
        half_efficiency_flops=float(f"{half_eff:.4g}"),
    )
    fit = {
        "gemm": {
            "model": "t = (flops + half_efficiency_flops) / R + plain_launch, R = peak * compute_efficiency",
            "rate_gflops": round(rate / 1e9, 3),
            "intercept_us": round(c0 * 1e6, 3),
            "plain_launch_us": round(plain_s * 1e6, 3),
            "best_gflops": round(max(p["gflops"] for p in square), 3),
            "compute_efficiency": "measured vs --peak-tflops"
            if peak_tflops
            else f"fixed at {DEFAULT_COMPUTE_EFFICIENCY} (no vendor peak given)",
            "mape_percent": round(mape(gemm_pred, [p["seconds"] for p in square]), 2),
            "skinny_mape_percent": round(mape(skinny_pred, [p["seconds"] for p in skinny]), 2),
        }
        | ({"warnings": warnings} if warnings else {}),
        "half": half_fits,
        "elementwise": {
            "model": "t = c + bytes / (bandwidth * memory_efficiency), allocating a + b",
            "effective_GBps": round(effective / 1e9, 3),
            "streaming_GBps": round(streaming / 1e9, 3),
            "intercept_us": round(c_mem * 1e6, 3),
            "fitted_sizes": [p["numel"] for p in big],
            "mape_percent": round(mape(elem_pred, [p["allocating_s"] for p in big]), 2),
        },
        "conv": {
            "measured_over_predicted": [p["measured_over_predicted"] for p in conv],
        },
    }
    return device, fit


def _fit_half(results: dict, ce: float) -> tuple[dict[str, float], dict[str, dict]]:
    """Peak TFLOP/s of each half type that ran (tf32, bf16, fp16), and their fit report."""
    peaks, half_fits = {}, {}
    for name in ("tf32", "bf16", "fp16"):
        pts = results.get(f"gemm_{name}")
        if not isinstance(pts, list) or not pts:
            continue
        if len(pts) >= 2:
            _, inv = fit_line_relative([p["flops"] for p in pts], [p["seconds"] for p in pts])
            r = 1.0 / inv
        else:
            r = max(p["gflops"] for p in pts) * 1e9
        peaks[name] = r / ce / 1e12
        half_fits[name] = {
            "rate_gflops": round(r / 1e9, 2),
            "best_gflops": round(max(p["gflops"] for p in pts), 2),
        }
    return peaks, half_fits
