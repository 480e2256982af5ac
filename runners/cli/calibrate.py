"""`pipeplan calibrate`: measure this machine and write a calibration profile.

torch is imported inside the command only (`runners.calibrate`), so `pipeplan --help` and
every planning command stay torch-free.
"""

import sys
from pathlib import Path
from typing import Annotated

import typer

from cost.files import check_output_file
from runners.cli.common import guarded
from runners.cli.options import BatchOpt, DimOpt, InputShapeOpt, bindings


@guarded
def calibrate(
    output: Annotated[str, typer.Option("-o", "--output", help="Write PROFILE.yaml here.")],
    device: Annotated[str, typer.Option("--device", help="cpu, or cuda (the first GPU).")] = "cpu",
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="Also time every distinct operator of this ONNX model (repeatable; "
            "the shape options apply to each).",
        ),
    ] = None,
    dim: DimOpt = None,
    batch: BatchOpt = None,
    input_shape: InputShapeOpt = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Small sizes, few repeats: seconds, for tests.")
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="torch threads (default: torch's current count, which follows OMP_NUM_THREADS).",
        ),
    ] = None,
    peak_tflops: Annotated[
        float | None,
        typer.Option(
            "--peak-tflops",
            help="Vendor fp32 peak, TFLOP/s: compute_efficiency becomes measured / peak "
            "(default: efficiency fixed at 0.9).",
        ),
    ] = None,
    extend: Annotated[
        str | None,
        typer.Option(
            "--extend",
            help="Start from this profile: keep its figures and operators, time only the "
            "models' operators it lacks.",
        ),
    ] = None,
    concurrency: Annotated[
        int,
        typer.Option(
            "--concurrency",
            help="Time the models' operators while N-1 other processes run the same model "
            "(the host's other devices busy, as in a pipeline run of N processes on it).",
        ),
    ] = 1,
    pipeline: Annotated[
        int,
        typer.Option(
            "--pipeline",
            help="Also run each model as a pipeline of N local processes (plan, export, "
            "run) and scale its operators to the stage times measured there (0: off).",
        ),
    ] = 0,
    no_link: Annotated[
        bool, typer.Option("--no-link", help="Skip the two-process link ping-pong.")
    ] = False,
    no_families: Annotated[
        bool, typer.Option("--no-families", help="Skip the per-family operator sweeps.")
    ] = False,
    no_networks: Annotated[
        bool,
        typer.Option(
            "--no-networks",
            help="Skip the calibrator's own networks (no in-model cost for operators "
            "priced by a family law or the roofline).",
        ),
    ] = False,
    no_context: Annotated[
        bool,
        typer.Option(
            "--no-context",
            help="Keep isolated operator times (no whole-model context correction).",
        ),
    ] = False,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="What times the models' operators: torch (the torch runner) or onnxruntime "
            "(`run --engine onnxruntime`; forward only, on top of --extend or a fresh torch "
            "calibration).",
        ),
    ] = "torch",
    note: Annotated[str, typer.Option("--note", help="Free text stored in the profile.")] = "",
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the profile as JSON instead of a summary.")
    ] = False,
) -> None:
    """Measure this machine with torch (GEMM, elementwise, convolution, launch, a
    two-process link, and optionally every operator of a model); write a profile that a
    cluster file uses as a device: `devices: [{profile: PROFILE.yaml, count: 2}]`."""
    from cost.errors import PipeplanError

    out = Path(output)
    check_output_file(out, "-o")
    if model is None and (dim or batch is not None or input_shape):
        raise PipeplanError("shape options (--batch, --dim, --input-shape) need --model")
    shapes = bindings(dim, batch, input_shape)
    from cost.profile import load_profile

    base = load_profile(extend) if extend else None
    from runners.calibrate import ModelRequest

    requests = [ModelRequest(m, shapes) for m in model or []]
    options = dict(
        quick=quick, threads=threads, peak_tflops=peak_tflops, link=not no_link,
        context=not no_context, concurrency=concurrency, pipeline=pipeline, note=note,
        families=not no_families, networks=not no_networks,
    )  # fmt: skip
    profile = _measure(device, requests, base, engine, options)
    _write(profile, out, quick=quick, json_out=json_out)


def _measure(device: str, requests: list, base, engine: str, options: dict):
    """The calibration: torch's (`runners.calibrate.calibrate`), and with `--engine
    onnxruntime` the models' operators timed in onnxruntime on top of it (or of `base`)."""
    from cost.errors import PipeplanError
    from runners.calibrate import calibrate as run_calibrate
    from runners.cli.progress import ProgressBar

    if engine not in ("torch", "onnxruntime"):
        raise PipeplanError(f"--engine must be torch or onnxruntime (got {engine})")
    ort = engine == "onnxruntime"
    if ort and (not requests or options["pipeline"] or device != "cpu"):
        raise PipeplanError(
            "--engine onnxruntime times the operators of --model on the CPU (no --pipeline)"
        )
    loaded = None
    if ort:  # the models first: a bad one fails before the torch calibration runs
        from runners.calibrate.ort_ops import load_models

        loaded = load_models(requests)
    with ProgressBar("measuring", elapsed=True) as update:
        progress = lambda what, done, total: update(done, total, what)  # noqa: E731
        if ort and base is not None:
            profile = base
        else:
            profile = run_calibrate(
                device, [] if ort else requests, extend=base, progress=progress, **options
            )
        if ort:
            from runners.calibrate.ort_ops import onnxruntime_profile

            profile = onnxruntime_profile(
                profile,
                requests,
                repeats=5 if options["quick"] else 30,
                threads=options["threads"],
                progress=progress,
                loaded=loaded,
            )
    return profile


def _write(profile, out: Path, *, quick: bool, json_out: bool) -> None:
    """Save the profile (atomically), warn of operators not timed, print its summary."""
    from cost.profile import save_profile

    save_profile(profile, out, header=_header(profile, quick))
    for failure in profile.fit.get("op_failures", []):
        print(f"warning: not timed (roofline used): {failure}", file=sys.stderr)
    if json_out:
        print(profile.model_dump_json(indent=2))
        return
    from runners.cli.render import print_profile

    print_profile(profile, out)


def _header(profile, quick: bool) -> str:
    machine = profile.machine
    where = machine.get("gpu") or machine.get("cpu_model") or "this machine"
    lines = [
        f"pipeplan calibration profile, measured on {where} "
        f"({machine.get('cpus', '?')} CPUs), {profile.threads} thread(s), torch {profile.torch_version}.",
        "Use it in a cluster file: devices: [{profile: THIS_FILE, count: N}], link: {profile: THIS_FILE}.",
    ]
    if quick:
        lines.append("QUICK calibration (small sizes, few repeats): for tests, not for planning.")
    return "\n".join(lines)
