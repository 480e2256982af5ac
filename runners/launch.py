"""`run`: execute a bundle on local processes with torchrun, and measure it.

The launcher checks the bundle (manifest version, stage files against their hashes),
starts `torchrun --standalone --nproc-per-node N -m runners.worker ...` (one process per
device of the plan, `OMP_NUM_THREADS=1` each unless set), waits, and merges what the
ranks wrote: step times, per-action timings, losses, and for `--check` outputs or
gradients, compared with onnxruntime or a single-process run of the same converted
graph. On several machines, start the same worker with torchrun yourself (README).

If a rank fails, torchrun stops the others (its elastic agent tears the group down), and
the launcher reports the failed rank's one-line error; a rank killed outright is named
with its exit code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from cost.errors import PipeplanError
from cost.files import check_output_file, write_text_atomic
from exporters.manifest import MANIFEST_VERSION, READABLE_VERSIONS, Manifest
from runners.report import Measured, RunReport, StageTiming


class RunFailed(PipeplanError):
    """A rank failed at run time: exit code 1."""

    exit_code = 1


def load_bundle(bundle: str | os.PathLike[str]) -> tuple[Path, Manifest]:
    """The bundle's manifest, after checking version and files; one-line errors."""
    from pydantic import ValidationError

    root = Path(bundle)
    path = root / "manifest.json"
    if not path.exists():
        raise PipeplanError(f"not a pipeplan bundle (no manifest.json): {root}")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise PipeplanError(f"unreadable manifest {path}: {str(exc).splitlines()[0]}") from None
    version = raw.get("manifest_version") if isinstance(raw, dict) else None
    if version not in READABLE_VERSIONS:
        raise PipeplanError(
            f"bundle {root} has manifest version {version!r}; this pipeplan reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} (writes {MANIFEST_VERSION}): export it again"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise PipeplanError(
            f"invalid manifest {path}: {'.'.join(map(str, first['loc']))}: {first['msg']}"
        ) from None
    if manifest.schedule is None:
        raise PipeplanError(
            f"bundle {root} has no schedule: export it from a plan made by this pipeplan"
        )
    for st in manifest.stages:
        for name, sha in [(st.file, st.sha256)] + [(x.file, x.sha256) for x in st.tensor_files]:
            f = root / name
            if not f.exists():
                raise PipeplanError(f"bundle {root} is missing {name}")
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            if digest != sha:
                raise PipeplanError(
                    f"{name} does not match its manifest (sha256 differs): the bundle was modified"
                )
    return root, manifest


def run(
    bundle: str | os.PathLike[str],
    *,
    nproc: int | None = None,
    steps: int = 5,
    mode: str | None = None,
    backend: str = "gloo",
    check: bool = False,
    seed: int = 0,
    lr: float | None = None,
    data: str | None = None,
    report: str | None = None,
    trace: str | None = None,
    timeout_s: float = 600.0,
    engine: str = "torch",
    providers: list[str] | None = None,
    stream: int | None = None,
    in_flight: int | None = None,
) -> RunReport:
    """Run `bundle` on `nproc` local processes; return measurements (and checks).

    `engine="onnxruntime"` (inference only) serves `stream` requests through the stage
    files in onnxruntime sessions (`runners.ort`), `in_flight` at once (default: one per
    stage), with `providers` for every stage (default: each device's, else CPU)."""
    check_output_file(report, "report")
    check_output_file(trace, "trace")
    root, manifest = load_bundle(bundle)
    if engine not in ("torch", "onnxruntime"):
        raise PipeplanError(f"--engine must be torch or onnxruntime (got {engine})")
    mode = mode or ("infer" if engine == "onnxruntime" else "train")
    if engine == "onnxruntime":
        return _run_onnxruntime(
            root, manifest, nproc=nproc, mode=mode, backend=backend, check=check, seed=seed,
            data=data, report=report, trace=trace, timeout_s=timeout_s, providers=providers,
            stream=stream, in_flight=in_flight,
        )  # fmt: skip
    if stream is not None or in_flight is not None or providers:
        raise PipeplanError("--stream, --in-flight and --providers need --engine onnxruntime")
    world = _world(manifest, nproc)
    if steps < 1:
        raise PipeplanError(f"--steps must be at least 1 (got {steps})")
    if mode not in ("train", "infer"):
        raise PipeplanError(f"--mode must be train or infer (got {mode})")
    if check and mode == "infer" and manifest.weights == "present":
        manifest.source_model(root)  # the reference must be there before ranks start
    out = Path(tempfile.mkdtemp(prefix="pipeplan-run-"))
    try:
        _launch(
            root,
            world,
            out,
            steps=steps,
            mode=mode,
            backend=backend,
            seed=seed,
            lr=lr,
            data=data,
            timeout_s=timeout_s,
            dump_grads=check and mode == "train",
        )
        results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
        result = _report(root, manifest, results, mode=mode, backend=backend, steps=steps)
        if check:
            from runners.reference import check_gradients, check_outputs

            if mode == "infer":
                result.check = check_outputs(root, manifest, out, seed=seed, data=data)
            else:
                result.check = check_gradients(root, manifest, out, seed=seed, data=data)
        if trace:
            from runners.trace import merged_trace

            write_text_atomic(trace, json.dumps(merged_trace(root, manifest, results)))
        if report:
            write_text_atomic(report, result.model_dump_json(indent=2))
        return result
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _world(manifest: Manifest, nproc: int | None) -> int:
    """The plan's world size; a one-line error when `--nproc` asks for another."""
    world = manifest.world_size
    if nproc is not None and nproc != world:
        layout = (
            f"{manifest.data_parallel} replicas x {len(manifest.pipeline_devices)} devices"
            if manifest.data_parallel > 1
            else f"stages on {world // manifest.tensor_parallel} devices"
        )
        if manifest.tensor_parallel > 1:
            layout += f" x tensor parallel {manifest.tensor_parallel}"
        raise PipeplanError(
            f"the plan runs {layout} ({world} ranks); --nproc {nproc} does not match"
        )
    return world


def _launch(
    root: Path,
    nproc: int,
    out: Path,
    *,
    steps,
    mode,
    backend,
    seed,
    lr,
    data,
    timeout_s,
    dump_grads,
) -> None:
    args = ["--steps", str(steps), "--mode", mode, "--backend", backend, "--seed", str(seed)]
    if lr is not None:
        args += ["--lr", str(lr)]
    if data:
        args += ["--data", str(data)]
    if dump_grads:
        args += ["--dump-grads"]
    _torchrun("runners.worker", root, nproc, out, args, timeout_s)


def _torchrun(module: str, root: Path, nproc: int, out: Path, args: list[str], timeout_s) -> None:
    """`torchrun` one process per rank of `module` on this machine; a failure as one line."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
        "--nproc-per-node", str(nproc), "--max-restarts", "0",
        "-m", module, str(root), "--out", str(out), *args,
    ]  # fmt: skip
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")) if p
    )
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RunFailed(
            f"the run did not finish within {timeout_s:.0f} s: stopped every rank"
        ) from None
    if proc.returncode != 0:
        raise RunFailed(_failure_line(out, output, proc.returncode))


#: Errors a rank sees when another rank died first: never the root cause.
SECONDARY = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "connection refused",
)


def _failure_line(out: Path, output: str, code: int) -> str:
    """One line naming the rank at the root of a failed run."""
    pattern = r"rank\s*:\s*(\d+)[^\n]*\n[^\n]*exitcode\s*:\s*(-?\d+)"
    killed = [(int(r), int(c)) for r, c in re.findall(pattern, output)]
    root = re.findall(pattern, output.split("Root Cause", 1)[1]) if "Root Cause" in output else []
    # torchrun sends SIGTERM to the survivors: another signal marks the rank that died.
    signalled = sorted({(r, c) for r, c in killed if c < 0 and c != -signal.SIGTERM})
    if root and int(root[0][1]) < 0 and int(root[0][1]) != -signal.SIGTERM:
        signalled = [(int(root[0][0]), int(root[0][1]))]
    if signalled:
        rank, exitcode = signalled[0]
        return f"rank {rank} died (killed by signal {-exitcode}); torchrun stopped the others"
    errors = sorted((out / "errors").glob("rank*.txt"), key=lambda p: int(p.stem[4:]))
    lines = [(p.stem[4:], p.read_text().strip()) for p in errors]
    primary = [x for x in lines if not any(s.lower() in x[1].lower() for s in SECONDARY)]
    if primary or lines:
        rank, text = (primary or lines)[0]
        return f"rank {rank} failed: {text}"
    if killed:
        rank, exitcode = killed[0]
        return f"rank {rank} exited with code {exitcode}; torchrun stopped the others"
    tail = [line for line in output.strip().splitlines() if line.strip()][-1:] or ["no output"]
    return f"torchrun failed with exit code {code}: {tail[0][:200]}"


def _report(
    root: Path, manifest: Manifest, results: list[dict], *, mode, backend, steps
) -> RunReport:
    per_step = [max(r["step_ms"][i] for r in results) for i in range(steps)]
    measured_steps = per_step[1:] if steps > 1 else per_step
    iteration = statistics.median(measured_steps)
    timings = []
    m = manifest.microbatches
    for st in manifest.stages:
        rank = next(r for r in results if st.index in r["stages"])
        events = [e for e in rank["events"] if e[1] == st.index]
        n_steps = max(len(rank["step_ms"]), 1)
        fwd = [e[4] - e[3] for e in events if e[0] == "F"]
        bwd = [e[4] - e[3] for e in events if e[0] in ("B", "W")]
        comm = sum(e[4] - e[3] for e in rank["events"] if e[0] in ("RECV", "WAIT", "SEND"))
        busy = sum(e[4] - e[3] for e in rank["events"] if e[0] in ("F", "B", "W"))
        total = sum(rank["step_ms"]) / 1e3
        timings.append(
            StageTiming(
                stage=st.index,
                device=st.device,
                rank=rank["rank"],
                forward_ms=1e3 * sum(fwd) / max(len(fwd), 1),
                backward_ms=1e3 * sum(bwd) / max(len(fwd), 1) if bwd else 0.0,
                comm_ms=1e3 * comm / n_steps,
                idle_ms=max(0.0, 1e3 * (total - busy - comm) / n_steps),
            )
        )
    # each replica's last stage has its replica's loss; the step's loss is their mean
    replica_losses = [r["losses"] for r in results if r["losses"]]
    losses = [sum(v) / len(v) for v in zip(*replica_losses, strict=True)] if replica_losses else []
    predicted = _predicted_ms(root, mode)
    samples = manifest.microbatch_size * m * manifest.data_parallel
    return RunReport(
        bundle=str(root),
        mode=mode,
        backend=backend,
        world_size=len(results),
        microbatches=m,
        **_layout(manifest),
        steps=steps,
        losses=losses,
        measured=Measured(
            iteration_ms=iteration,
            throughput_samples_per_s=samples / (iteration / 1e3) if iteration > 0 else 0.0,
            per_stage=timings,
            step_ms=per_step,
        ),
        predicted_iteration_ms=predicted,
        measured_over_predicted=iteration / predicted if predicted > 0 else 0.0,
    )


def _layout(manifest: Manifest) -> dict:
    """The report's fields that describe the bundle's layout."""
    return {
        "data_parallel": manifest.data_parallel,
        "tensor_parallel": manifest.tensor_parallel,
        "zero": manifest.zero,
        "schedule": manifest.schedule.kind,
        "microbatch_size": manifest.microbatch_size,
    }


def _predicted_ms(root: Path, mode: str) -> float:
    """The plan's predicted iteration; for `--mode infer` on a training plan, the
    simulation of its schedule's forward part (what an inference run executes)."""
    plan = _plan_of(root)
    if plan is None:
        return 0.0
    from planner.simulate.replay import replay

    if mode == "infer" and plan.config.training and plan.schedule is not None:
        return replay(plan, inference=True).iteration_s * 1e3
    return plan.predicted.iteration_ms


def _run_onnxruntime(
    root: Path,
    manifest: Manifest,
    *,
    nproc,
    mode,
    backend,
    check,
    seed,
    data,
    report,
    trace,
    timeout_s,
    providers,
    stream,
    in_flight,
) -> RunReport:
    """`run(..., engine="onnxruntime")`: checks first (mode, layout, providers, kernels),
    then torchrun `runners.ort.worker` and the serving report."""
    from runners.ort.providers import check_available, check_kernels, stage_providers
    from runners.ort.serving import serving_figures, serving_report

    if mode != "infer":
        raise PipeplanError("--engine onnxruntime runs inference only: use --mode infer")
    if manifest.weights != "present":
        raise PipeplanError(
            f"bundle {root} comes from a model without weights: onnxruntime runs the stage "
            "files as they are (export from a model with its weights, or use --engine torch)"
        )
    world = _world(manifest, nproc)
    requests = 32 if stream is None else stream
    if requests < 1:
        raise PipeplanError(f"--stream must be at least 1 (got {requests})")
    stages = len(manifest.stages)
    window = stages if in_flight is None else in_flight
    if window < 1:
        raise PipeplanError(f"--in-flight must be at least 1 (got {window})")
    per_stage = stage_providers(manifest, providers)
    check_available(per_stage, manifest)
    check_kernels(root, manifest, per_stage)  # before any process starts
    if check:
        manifest.source_model(root)
    warmup = max(2, stages)
    out = Path(tempfile.mkdtemp(prefix="pipeplan-serve-"))
    try:
        args = [
            "--requests", str(requests), "--warmup", str(warmup), "--in-flight", str(window),
            "--backend", backend, "--seed", str(seed),
        ]  # fmt: skip
        if providers:
            args += ["--providers", *providers]
        if data:
            args += ["--data", str(data)]
        if check:
            args += ["--keep-outputs"]
        _torchrun("runners.ort.worker", root, world, out, args, timeout_s)
        results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
        latencies, throughput, timings = serving_figures(manifest, results)
        serving = serving_report(
            manifest, results[0]["warmup"], latencies, throughput, _plan_of(root),
            in_flight=window, providers=per_stage,
        )  # fmt: skip
        result = RunReport(
            bundle=str(root),
            engine="onnxruntime",
            mode=mode,
            backend=backend,
            world_size=world,
            microbatches=requests,
            **_layout(manifest),
            steps=requests,
            measured=Measured(
                iteration_ms=serving.latency.p50_ms,
                throughput_samples_per_s=throughput,
                per_stage=timings,
                step_ms=latencies,
            ),
            predicted_iteration_ms=serving.predicted_latency_ms,
            measured_over_predicted=serving.latency_measured_over_predicted,
            serving=serving,
        )
        if check:
            from runners.reference import check_outputs

            result.check = check_outputs(
                root, manifest, out, seed=seed, data=data, requests=range(warmup + requests)
            )
        if trace:
            from runners.trace import merged_trace

            t0 = min(e[3] for r in results for e in r["events"])
            shifted = [
                {**r, "events": [(o, s, m, a - t0, b - t0) for o, s, m, a, b in r["events"]]}
                for r in results
            ]
            write_text_atomic(trace, json.dumps(merged_trace(root, manifest, shifted)))
        if report:
            write_text_atomic(report, result.model_dump_json(indent=2))
        return result
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _plan_of(root: Path):
    """The bundle's plan (`plan.json`), or None when it has none."""
    plan_file = root / "plan.json"
    if not plan_file.exists():
        return None
    from planner.plan_file import load_plan

    return load_plan(plan_file)
