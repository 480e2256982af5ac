"""The whole calibration, `calibrate()`: measure the local device with torch and fit the cost
model to it (`pipeplan calibrate`).

    profile = calibrate(device="cpu", models=[ModelRequest("gpt.onnx", ShapeBindings(batch=8))])
    save_profile(profile, "cpu.yaml")          # cost.profile

The steps, in order: microbenchmarks (`runners.calibrate.microbench`), the link ping-pong
(`runners.calibrate.link`), the operators of `models` (`runners.calibrate.model_ops`); then
the device, link and optimizer fits (`runners.calibrate.fits`) and the context correction;
with `pipeline=N` (N >= 2), a pipeline probe per model (`runners.calibrate.probe`), whose
measured iterations refit the link's latency. Also the machine facts a profile records, and
`profile_summary` for the CLI.

Threads: `threads` (default `torch.get_num_threads()`, which follows OMP_NUM_THREADS) is
set for every measurement and recorded. On a shared machine, repeat and compare.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from cost.profile import Profile
from planner.errors import PipeplanError
from runners.calibrate.fits import fit_device, fit_link, fit_optimizer
from runners.calibrate.link import measure_link
from runners.calibrate.microbench import microbenchmark_steps
from runners.calibrate.model_ops import ModelOps, ModelRequest
from runners.calibrate.operators import OpTimer
from runners.calibrate.timing import Sizes, Timer

Progress = Callable[[str, int, int], None]  # (what, done, total)


def _machine(device: torch.device) -> dict:
    info: dict = {
        "system": platform.system(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
    return info


def _memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 1e9
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 16.0


def _device_name(device: torch.device, threads: int, machine: dict) -> str:
    if device.type == "cuda":
        return f"{machine.get('gpu', 'GPU')} (measured)"
    cpu = machine.get("cpu_model", "CPU")
    return f"CPU {cpu} ({threads} thread{'s' * (threads != 1)}, measured)"


def calibrate(
    device: str = "cpu",
    models: Sequence[ModelRequest] = (),
    *,
    quick: bool = False,
    threads: int | None = None,
    peak_tflops: float | None = None,
    link: bool = True,
    context: bool = True,
    concurrency: int = 1,
    pipeline: int = 0,
    extend: Profile | None = None,
    progress: Progress | None = None,
    note: str = "",
) -> Profile:
    """Measure the local `device` ('cpu' or 'cuda') and return a fitted `Profile`.

    `models`: also time every distinct operator of these. `extend`: keep that profile's
    device, link and operators (measure only the operators it lacks). `peak_tflops`: the
    vendor fp32 peak, to split the fitted rate into peak and efficiency (see the module
    docstring). `pipeline`: with 2 or more, run each model as a pipeline of that many
    local processes (`runners.calibrate.probe`) and scale its operators to the times measured there.
    `progress(what, done, total)` is called before each measurement.
    """
    if device not in ("cpu", "cuda"):
        raise PipeplanError(f"--device must be cpu or cuda (got {device!r})")
    if device == "cuda" and not torch.cuda.is_available():
        raise PipeplanError("--device cuda: torch sees no CUDA device here")
    if concurrency < 1:
        raise PipeplanError(f"--concurrency must be at least 1 (got {concurrency})")
    if pipeline == 1 or pipeline < 0:
        raise PipeplanError(f"--pipeline must be 0 (off) or at least 2 (got {pipeline})")
    if threads is not None and threads < 1:
        raise PipeplanError(f"--threads must be at least 1 (got {threads})")
    if peak_tflops is not None and not peak_tflops > 0:
        raise PipeplanError(f"--peak-tflops must be positive (got {peak_tflops})")
    if extend is not None:
        threads = threads or extend.threads
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    sizes = Sizes.quick() if quick else Sizes.full()
    timer = Timer(dev, sizes)
    for req in models:
        if not Path(req.path).exists():
            raise PipeplanError(f"model file not found: {req.path}")

    steps: list[tuple[str, Callable[[], None]]] = []
    raw: dict = dict(extend.measurements) if extend is not None else {}
    results: dict = {}

    if extend is None:
        steps += microbenchmark_steps(timer, results)
        if link:
            backend = "nccl" if dev.type == "cuda" and torch.cuda.device_count() >= 2 else "gloo"

            def run_link(backend=backend):
                results["link_backend"] = backend
                results["pingpong"] = measure_link(sizes, threads, backend)

            steps.append((f"link ping-pong ({'gloo' if backend == 'gloo' else backend})", run_link))

    op_timer = OpTimer(timer)
    model_ops = ModelOps(op_timer, extend, context, concurrency, threads)
    if models:
        steps += model_ops.plan_steps(models)

    probes = list(model_ops.runs) if pipeline >= 2 else []
    total = len(steps) + len(probes)
    try:
        for i, (what, fn) in enumerate(steps):
            if progress is not None:
                progress(what, i, total)
            fn()
    finally:
        for load in model_ops.loads:
            load.stop()

    if extend is not None:
        device_fig, link_fig, fit = extend.device, extend.link, dict(extend.fit)
        optimizer = dict(extend.optimizer)
    else:
        machine = _machine(dev)
        name = _device_name(dev, threads, machine)
        device_fig, fit = fit_device(results, peak_tflops, name, _memory_gb(dev))
        link_fig = None
        if "pingpong" in results:
            link_fig, fit["link"] = fit_link(
                results["pingpong"], results.get("link_backend", "gloo")
            )
        optimizer, fit["optimizer"] = fit_optimizer(results["optimizer"])
        raw = dict(results)
    model_ops.finish()
    overhead = dict(extend.overhead) if extend is not None else {}
    if models:
        overhead = {k: float(v) for k, v in op_timer.overhead.items()}
    if model_ops.failures:
        fit["op_failures"] = model_ops.failures

    def profile() -> Profile:
        return Profile(
            device=device_fig,
            link=link_fig,
            ops=model_ops.ops,
            optimizer=optimizer,
            models=model_ops.reports,
            overhead=overhead,
            fit=fit,
            measurements=raw,
            machine=extend.machine if extend is not None else _machine(dev),
            threads=threads,
            torch_version=torch.__version__,
            created=datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
            note=note or (extend.note if extend is not None else ""),
        )

    ran = []
    for i, (req, mg, _) in enumerate(probes):
        if progress is not None:
            progress(f"pipeline probe of {Path(req.path).name}", len(steps) + i, total)
        if model_ops.apply_probe(req, mg, profile(), pipeline):
            ran.append(req)
    if ran and link_fig is not None:
        # every probe the profile holds (an --extend keeps the earlier models' ones)
        from runners.calibrate.probe import fit_pipeline_latency, fit_send_blocking

        records = [
            r["pipeline"]["replay"]
            for r in model_ops.reports.values()
            if isinstance(r.get("pipeline"), dict) and "replay" in r["pipeline"]
        ]
        link_fit = dict(fit.get("link", {}))
        quiet = link_fig.model_copy(
            update={"latency_us": link_fit.get("ping_pong_latency_us", link_fig.latency_us)}
        )
        sends = fit_send_blocking(records)
        if sends is not None:  # the runner's own sends, stalls included, beat the ping-pong's
            alpha, beta, link_fit["send_blocking_pipeline"] = sends
            quiet = quiet.model_copy(
                update={
                    "send_blocking_us": alpha * 1e6,
                    "send_blocking_GBps": beta / 1e9 if beta else None,
                }
            )
        latency_s, report = fit_pipeline_latency(records, quiet)
        link_fig = quiet.model_copy(update={"latency_us": latency_s * 1e6})
        fit["link"] = link_fit | {"ping_pong_latency_us": quiet.latency_us, "pipeline": report}
    if progress is not None:
        progress("done", total, total)
    return profile()


def profile_summary(profile: Profile) -> list[tuple[str, str]]:
    """Rows (what, value) describing a profile, for the CLI."""
    d = profile.device
    rows = [
        ("device", d.name),
        ("threads", str(profile.threads)),
        (
            "peak TFLOP/s",
            ", ".join(f"{k} {v:.4g}" for k, v in d.peak_tflops.items()),
        ),
        ("compute efficiency", f"{d.compute_efficiency:.3g}"),
        ("half-efficiency FLOPs", f"{d.half_efficiency_flops:.3g}"),
        ("memory bandwidth", f"{d.bandwidth_GBps:.4g} GB/s x {d.memory_efficiency:.3g}"),
        ("launch overhead", f"{d.launch_overhead_us:.3g} us"),
        ("memory", f"{d.memory_GB:.4g} GB"),
    ]
    gemm = profile.fit.get("gemm")
    if isinstance(gemm, dict):
        rows.append(
            ("GEMM fit", f"{gemm.get('rate_gflops')} GFLOP/s, MAPE {gemm.get('mape_percent')}%")
        )
    if profile.link is not None:
        rows.append(
            (
                "link",
                f"{profile.link.bandwidth_GBps:.4g} GB/s, {profile.link.latency_us:.3g} us ({profile.link.backend})",
            )
        )
    if "adam" in profile.optimizer:
        fit = profile.optimizer["adam"]
        rows.append(
            ("Adam step", f"{fit.per_tensor_us:.3g} us/tensor + {fit.per_param_ns:.3g} ns/param")
        )
    rows.append(("operators", str(len(profile.ops))))
    for key, report in profile.models.items():
        probe = report.get("pipeline")
        if isinstance(probe, dict) and "forward_factor" in probe:
            rows.append(
                (
                    f"pipeline probe {key}",
                    f"forward x{probe['forward_factor']:.3g}, backward x{probe['backward_factor']:.3g}",
                )
            )
    return rows
