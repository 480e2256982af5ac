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
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cost.errors import PipeplanError
from cost.profile import InModelFit, Profile, ProfileDevice, ProfileLink
from runners.calibrate.fits import fit_device, fit_link, fit_optimizer
from runners.calibrate.link import measure_link
from runners.calibrate.microbench import microbenchmark_steps
from runners.calibrate.model_ops import ModelOps, ModelRequest, model_key
from runners.calibrate.operators import OpTimer
from runners.calibrate.probe import fit_pipeline_latency, fit_send_blocking
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
    families: bool = True,
    networks: bool = True,
) -> Profile:
    """Measure the local `device` ('cpu' or 'cuda') and return a fitted `Profile`.

    `models`: also time every distinct operator of these. `extend`: keep that profile's
    device, link and operators (measure only the operators it lacks). `peak_tflops`: the
    vendor fp32 peak, to split the fitted rate into peak and efficiency
    (`runners.calibrate.fits`). `pipeline`: with 2 or more, run each model as a pipeline of
    that many local processes (`runners.calibrate.probe`) and scale its operators to the
    times measured there. `families`: sweep every operator family and fit its time law
    (`runners.calibrate.families`), so that operators never timed are priced from their
    family. `networks`: also time the calibrator's own networks
    (`runners.calibrate.networks`) to fit the in-model cost that scales operators priced
    by a law or the roofline (`runners.calibrate.in_model`; not with `extend`, which keeps
    its profile's networks). `progress(what, done, total)` is called before each
    measurement.
    """
    _check_arguments(device, threads, peak_tflops, concurrency, pipeline)
    with tempfile.TemporaryDirectory(prefix="pipeplan-networks-") as tmp:
        if networks and extend is None:
            from runners.calibrate.networks import export_networks

            models = [*export_networks(tmp), *models]
        return _calibrate(
            device, models, quick, threads, peak_tflops, link, context, concurrency,
            pipeline, extend, progress, note, families,
        )  # fmt: skip


def _calibrate(
    device: str,
    models: Sequence[ModelRequest],
    quick: bool,
    threads: int | None,
    peak_tflops: float | None,
    link: bool,
    context: bool,
    concurrency: int,
    pipeline: int,
    extend: Profile | None,
    progress: Progress | None,
    note: str,
    families: bool,
) -> Profile:
    cal = _start(device, models, quick, threads, context, concurrency, extend, note)
    steps: list[Step] = []
    if extend is None:
        steps += microbenchmark_steps(cal.timer, cal.results)
        if families:
            steps += _family_steps(cal, quick)
        if link:
            steps.append(_link_step(cal))
    if models:
        steps += cal.model_ops.plan_steps(models)
    probes = list(cal.model_ops.runs) if pipeline >= 2 else []
    total = len(steps) + len(probes)
    _run_steps(steps, cal.model_ops, progress, total)
    _fit(cal, peak_tflops, timed_models=bool(models))
    _probe(cal, probes, pipeline, progress, len(steps), total)
    _fit_in_model(cal)
    if progress is not None:
        progress("done", total, total)
    return cal.profile()


Step = tuple[str, Callable[[], None]]  # (what, measure)


@dataclass
class _Calibration:
    """One calibration under way: the settings every measurement uses, the points the steps
    measure, and the parts of the profile once fitted (`_fit`)."""

    dev: torch.device
    timer: Timer
    threads: int
    extend: Profile | None
    model_ops: ModelOps
    machine: dict
    note: str
    results: dict = field(default_factory=dict)  # microbenchmark and link points
    device: ProfileDevice | None = None
    link: ProfileLink | None = None
    fit: dict = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)
    measurements: dict = field(default_factory=dict)
    overhead: dict = field(default_factory=dict)
    families: dict = field(default_factory=dict)
    in_model: InModelFit | None = None

    def profile(self) -> Profile:
        """The profile of what is fitted so far (the operators as they stand)."""
        return Profile(
            device=self.device,
            link=self.link,
            ops=self.model_ops.ops,
            optimizer=self.optimizer,
            families=self.families,
            in_model=self.in_model,
            models=self.model_ops.reports,
            overhead=self.overhead,
            fit=self.fit,
            measurements=self.measurements,
            machine=self.machine,
            threads=self.threads,
            torch_version=torch.__version__,
            created=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
            note=self.note,
        )


def _check_arguments(
    device: str,
    threads: int | None,
    peak_tflops: float | None,
    concurrency: int,
    pipeline: int,
) -> None:
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


def _start(
    device: str,
    models: Sequence[ModelRequest],
    quick: bool,
    threads: int | None,
    context: bool,
    concurrency: int,
    extend: Profile | None,
    note: str,
) -> _Calibration:
    """Set the threads and pick the device and sizes; every model file must exist."""
    if extend is not None:
        threads = threads or extend.threads
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    timer = Timer(dev, Sizes.quick() if quick else Sizes.full())
    for req in models:
        if not Path(req.path).exists():
            raise PipeplanError(f"model file not found: {req.path}")
    return _Calibration(
        dev=dev,
        timer=timer,
        threads=threads,
        extend=extend,
        model_ops=ModelOps(OpTimer(timer), extend, context, concurrency, threads),
        machine=extend.machine if extend is not None else _machine(dev),
        note=note or (extend.note if extend is not None else ""),
    )


def _family_steps(cal: _Calibration, quick: bool) -> list[Step]:
    """One step per operator family: its sweep, timed as a model's operators are."""
    from runners.calibrate.families import SWEPT, measure_family

    op_timer = cal.model_ops.op_timer
    points: dict[str, list] = cal.results.setdefault("families", {})

    def overhead() -> None:
        op_timer.measure_overhead()

    def sweep(family: str) -> Callable[[], None]:
        def run() -> None:
            points[family] = [list(p) for p in measure_family(family, op_timer.time_node, quick)]

        return run

    return [("operator call overhead", overhead)] + [
        (f"family sweep: {family}", sweep(family)) for family in SWEPT
    ]


def _link_step(cal: _Calibration) -> Step:
    """The link ping-pong: gloo, or NCCL on 2+ GPUs."""
    backend = "nccl" if cal.dev.type == "cuda" and torch.cuda.device_count() >= 2 else "gloo"

    def run_link() -> None:
        cal.results["link_backend"] = backend
        cal.results["pingpong"] = measure_link(cal.timer.sizes, cal.threads, backend)

    return (f"link ping-pong ({backend})", run_link)


def _run_steps(
    steps: list[Step], model_ops: ModelOps, progress: Progress | None, total: int
) -> None:
    """Run the measurements in order; the background loads stop whatever happens."""
    try:
        for i, (what, fn) in enumerate(steps):
            if progress is not None:
                progress(what, i, total)
            fn()
    finally:
        for load in model_ops.loads:
            load.stop()


def _fit(cal: _Calibration, peak_tflops: float | None, timed_models: bool) -> None:
    """The device, link and optimizer figures (the extended profile's, or fitted to this
    calibration's points), the operators' context correction and the call overheads."""
    extend = cal.extend
    if extend is not None:
        cal.device, cal.link, cal.fit = extend.device, extend.link, dict(extend.fit)
        cal.optimizer = dict(extend.optimizer)
        cal.measurements = dict(extend.measurements)
        cal.families = dict(extend.families)
    else:
        results = cal.results
        name = _device_name(cal.dev, cal.threads, cal.machine)
        cal.device, cal.fit = fit_device(results, peak_tflops, name, _memory_gb(cal.dev))
        if "pingpong" in results:
            cal.link, cal.fit["link"] = fit_link(
                results["pingpong"], results.get("link_backend", "gloo")
            )
        cal.optimizer, cal.fit["optimizer"] = fit_optimizer(results["optimizer"])
        cal.measurements = dict(results)
        if results.get("families"):
            from runners.calibrate.families import fit_family

            cal.families = {f: fit_family(pts) for f, pts in results["families"].items() if pts}
    cal.model_ops.finish()
    cal.overhead = dict(extend.overhead) if extend is not None else {}
    if timed_models:
        cal.overhead = {k: float(v) for k, v in cal.model_ops.op_timer.overhead.items()}
    if cal.model_ops.failures:
        cal.fit["op_failures"] = cal.model_ops.failures


def _probe(
    cal: _Calibration,
    probes: list[tuple[ModelRequest, object, dict]],
    stages: int,
    progress: Progress | None,
    done: int,
    total: int,
) -> None:
    """Run each of `probes` (`ModelOps.runs`) as a pipeline of `stages` processes and scale
    its operators; if any ran, refit the link to the probes."""
    ran = []
    for i, (req, mg, _) in enumerate(probes):
        if progress is not None:
            progress(f"pipeline probe of {Path(req.path).name}", done + i, total)
        if cal.model_ops.apply_probe(req, mg, cal.profile(), stages):
            ran.append(req)
    if ran and cal.link is not None:
        _refit_link(cal)


def _fit_in_model(cal: _Calibration) -> None:
    """Each model calibrated now priced as if never calibrated (family laws, roofline), then
    the in-model cost over every model the profile holds (`runners.calibrate.in_model`)."""
    from runners.calibrate.in_model import alone_seconds, fit_in_model

    if not cal.model_ops.runs:
        cal.in_model = cal.extend.in_model if cal.extend is not None else None
        return
    bare = cal.profile()
    for req, mg, _ in cal.model_ops.runs:
        report = cal.model_ops.reports.get(model_key(req))
        if report is not None:
            report["alone_forward_s"], report["alone_backward_s"] = alone_seconds(mg, bare)
    cal.in_model = fit_in_model(cal.model_ops.reports)


def _refit_link(cal: _Calibration) -> None:
    """The link's send blocking and latency fitted to every probe the profile holds (an
    --extend keeps the earlier models' ones)."""
    cal.link, cal.fit["link"] = refit_link(cal.link, cal.fit.get("link", {}), cal.model_ops.reports)


def refit_link(
    link: ProfileLink, link_fit: dict, reports: dict[str, dict]
) -> tuple[ProfileLink, dict]:
    """`link` with its send blocking and latency fitted to the probes of `reports`
    (`Profile.models`), and its fit record; the ping-pong's latency is kept in the fit."""
    records = [
        r["pipeline"]["replay"]
        for r in reports.values()
        if isinstance(r.get("pipeline"), dict) and "replay" in r["pipeline"]
    ]
    link_fit = dict(link_fit)
    if not records:
        return link, link_fit
    quiet = link.model_copy(
        update={"latency_us": link_fit.get("ping_pong_latency_us", link.latency_us)}
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
    fitted = quiet.model_copy(update={"latency_us": latency_s * 1e6})
    return fitted, link_fit | {"ping_pong_latency_us": quiet.latency_us, "pipeline": report}


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
    fit = profile.in_model
    if fit is not None:
        rows.append(
            (
                f"in-model cost ({fit.source})",
                f"{fit.forward_node_us:.3g} us forward, {fit.backward_node_us:.3g} us backward "
                f"per operator (median of {len(fit.models)} model{'s' * (len(fit.models) != 1)})",
            )
        )
        if fit.held_out_error:
            errors = ", ".join(
                f"{key.split()[0].removesuffix('.onnx')} {err:.0%}"
                for key, err in fit.held_out_error.items()
            )
            mean = sum(fit.held_out_error.values()) / len(fit.held_out_error)
            rows.append(("held-out model error", f"{errors} (mean {mean:.0%})"))
    if profile.families:
        held = sorted(profile.families.items(), key=lambda kv: kv[0])
        rows.append(
            (
                "family fits (held-out error)",
                ", ".join(f"{name} {fit.held_out_error:.0%}" for name, fit in held),
            )
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
