"""The `pipeplan` command line: a thin layer over the library functions.

Every command parses its options, calls one library function, and renders the result.
Heavy modules (onnx, networkx, pulp, torch) are imported inside the commands, so that
`pipeplan --help` answers at once. Bad input raises `PipeplanError`: the CLI prints one
`error: ...` line and exits with its code (2, or 3 when a model cannot fit).
"""

from __future__ import annotations

import functools
import sys
from typing import Annotated

import typer

app = typer.Typer(
    name="pipeplan",
    help="Model-parallel partitioning and pipeline planner for ONNX models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Options shared by every command that loads a model.
DimOpt = Annotated[
    list[str] | None,
    typer.Option("--dim", help="Bind a symbolic dimension: NAME=VALUE (repeatable)."),
]
BatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch", help="Bind the first dimension of every graph input (micro-batch size)."
    ),
]
InputShapeOpt = Annotated[
    list[str] | None,
    typer.Option("--input-shape", help="Set a whole input shape: NAME=1x3x224x224 (repeatable)."),
]
LayersOpt = Annotated[
    str | None,
    typer.Option(
        "--layers", help="YAML file {layer_name: [node-name regex, ...]} overriding the grouping."
    ),
]
LayerDepthOpt = Annotated[
    int | None,
    typer.Option(
        "--layer-depth", help="Group by module scope at exactly this depth (e.g. 2 for blocks.3)."
    ),
]
MaxShareOpt = Annotated[
    float,
    typer.Option(
        "--max-layer-share", help="Split module groups heavier than this share of the model's work."
    ),
]


@app.callback()
def _root() -> None:
    """Plan a pipeline split of an ONNX model over a cluster of devices."""


# Options shared by every command that plans (`plan`, `whatif`).
MicrobatchesOpt = Annotated[
    str,
    typer.Option(
        "--microbatches",
        "-m",
        help="Micro-batches per iteration, or auto (bubble <= 10%, fits memory).",
    ),
]
ScheduleOpt = Annotated[
    str,
    typer.Option("--schedule", help="gpipe, 1f1b, interleaved, zb, or auto (fastest that fits)."),
]
VirtualStagesOpt = Annotated[
    int,
    typer.Option("--virtual-stages", help="Model chunks per device for --schedule interleaved."),
]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="fp32, bf16 or fp16.")]
OptimizerOpt = Annotated[str, typer.Option("--optimizer", help="sgd, momentum or adam.")]
RecomputeOpt = Annotated[bool, typer.Option("--recompute", help="Full activation recomputation.")]
ObjectiveOpt = Annotated[
    str, typer.Option("--objective", help="throughput (training) or latency (inference).")
]
StrategyOpt = Annotated[str, typer.Option("--strategy", help="ilp, uniform, params, greedy or dp.")]
TimeLimitOpt = Annotated[float, typer.Option("--time-limit", help="ILP time limit, seconds.")]
HeadroomOpt = Annotated[
    float, typer.Option("--headroom", help="Fraction of device memory kept free.")
]
StagesOpt = Annotated[
    int | None, typer.Option("--stages", help="Fix the number of pipeline stages.")
]
SolverOpt = Annotated[
    str, typer.Option("--solver", help="highs (default; CBC is the fallback) or cbc.")
]
TailGapOpt = Annotated[
    float,
    typer.Option(
        "--tail-gap",
        help="Keep the ILP's split solved without the optimizer-step tail when proven within "
        "this fraction of the optimum (0: always solve with it).",
    ),
]


def _plan_config(
    *,
    microbatches,
    schedule,
    virtual_stages,
    dtype,
    optimizer,
    recompute,
    objective,
    strategy,
    time_limit,
    headroom,
    stages,
    solver,
    tail_gap=0.005,
):
    """The PlanConfig the planning options describe (`--microbatches auto` included)."""
    from planner.config import PlanConfig
    from planner.io import config_from_options

    auto_m = microbatches.strip().lower() == "auto"
    return config_from_options(
        PlanConfig,
        microbatches=8 if auto_m else microbatches,
        auto_microbatches=auto_m,
        virtual_stages=virtual_stages,
        schedule=schedule,
        dtype=dtype,
        optimizer=optimizer,
        recompute=recompute,
        objective=objective,
        strategy=strategy,
        time_limit_s=time_limit,
        memory_headroom=headroom,
        stages=stages,
        solver=solver,
        tail_gap=tail_gap,
    )


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def guarded(fn):
    """Turn `PipeplanError` into one line on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from planner.errors import PipeplanError

        try:
            return fn(*args, **kwargs)
        except PipeplanError as exc:
            _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    return wrapper


def _bindings(dim, batch, input_shape):
    from planner.errors import PipeplanError
    from planner.shapes import ShapeBindings, parse_dim_binding, parse_input_shape

    if batch is not None and batch <= 0:
        raise PipeplanError(f"--batch must be positive (got {batch})")
    return ShapeBindings(
        dims=dict(parse_dim_binding(d) for d in dim or []),
        batch=batch,
        input_shapes=dict(parse_input_shape(s) for s in input_shape or []),
    )


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


@app.command()
@guarded
def inspect(
    model: Annotated[str, typer.Argument(help="ONNX model file.")],
    dim: DimOpt = None,
    batch: BatchOpt = None,
    input_shape: InputShapeOpt = None,
    layers: LayersOpt = None,
    layer_depth: LayerDepthOpt = None,
    max_layer_share: MaxShareOpt = 1 / 16,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a table.")
    ] = False,
    show_nodes: Annotated[
        bool, typer.Option("--nodes", help="List each layer's ONNX nodes.")
    ] = False,
) -> None:
    """Load a model, price every operator, and show its layers."""
    from planner.inspection import inspect_model

    report = inspect_model(
        model,
        _bindings(dim, batch, input_shape),
        layers_file=layers,
        layer_depth=layer_depth,
        max_layer_share=max_layer_share,
    )
    _warn(report.warnings)
    if json_out:
        print(report.model_dump_json(indent=2))
        return
    from planner.render import print_inspect

    print_inspect(report, show_nodes=show_nodes)


@app.command()
@guarded
def plan(
    model: Annotated[str, typer.Argument(help="ONNX model file (one micro-batch).")],
    cluster: Annotated[str, typer.Option("--cluster", "-c", help="Cluster spec, YAML or JSON.")],
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Write PLAN.json here.")
    ] = None,
    dim: DimOpt = None,
    batch: BatchOpt = None,
    input_shape: InputShapeOpt = None,
    microbatches: MicrobatchesOpt = "8",
    schedule: ScheduleOpt = "1f1b",
    virtual_stages: VirtualStagesOpt = 2,
    dtype: DtypeOpt = "fp32",
    optimizer: OptimizerOpt = "adam",
    recompute: RecomputeOpt = False,
    objective: ObjectiveOpt = "throughput",
    strategy: StrategyOpt = "ilp",
    time_limit: TimeLimitOpt = 30.0,
    headroom: HeadroomOpt = 0.1,
    stages: StagesOpt = None,
    solver: SolverOpt = "highs",
    tail_gap: TailGapOpt = 0.005,
    layers: LayersOpt = None,
    layer_depth: LayerDepthOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print PLAN.json to stdout instead of a table.")
    ] = False,
) -> None:
    """Split a model across a cluster: fit memory, maximise throughput, explain why."""
    from planner.api import plan as make_plan
    from planner.io import write_json_atomic

    config = _plan_config(
        microbatches=microbatches,
        schedule=schedule,
        virtual_stages=virtual_stages,
        dtype=dtype,
        optimizer=optimizer,
        recompute=recompute,
        objective=objective,
        strategy=strategy,
        time_limit=time_limit,
        headroom=headroom,
        stages=stages,
        solver=solver,
        tail_gap=tail_gap,
    )
    result = make_plan(
        model,
        cluster,
        config,
        _bindings(dim, batch, input_shape),
        layers_file=layers,
        layer_depth=layer_depth,
    )
    _warn(result.warnings)
    if output:
        write_json_atomic(output, result.model_dump_json(indent=2))
    if json_out:
        print(result.model_dump_json(indent=2))
        return
    from planner.render import print_plan

    print_plan(result, output)


@app.command()
@guarded
def simulate(
    plan_file: Annotated[
        str, typer.Argument(metavar="PLAN.json", help="A plan from `pipeplan plan`.")
    ],
    trace: Annotated[
        str | None,
        typer.Option("--trace", help="Write a Chrome trace (Perfetto, chrome://tracing)."),
    ] = None,
    png: Annotated[
        str | None, typer.Option("--png", help="Write a timeline PNG (Gantt and memory).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Simulate a plan's pipeline schedule: iteration time, bubble, busy/idle and memory per device."""
    from planner.simulate_plan import simulate_plan

    report = simulate_plan(plan_file, trace=trace, png=png)
    if json_out:
        print(report.model_dump_json(indent=2))
        return
    from planner.render import print_simulation

    print_simulation(report, trace=trace, png=png)


@app.command()
@guarded
def export(
    model: Annotated[str, typer.Argument(help="The ONNX model the plan was made for.")],
    plan_file: Annotated[
        str, typer.Argument(metavar="PLAN.json", help="A plan from `pipeplan plan`.")
    ],
    output: Annotated[str, typer.Option("-o", "--output", help="Bundle folder to create.")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace the bundle folder if it exists.")
    ] = False,
) -> None:
    """Cut the model along the plan: one runnable ONNX per stage plus manifest.json."""
    from exporters.bundle import export as export_bundle

    manifest = export_bundle(model, plan_file, output, force=force)
    from planner.render import print_manifest

    print_manifest(manifest, output)


@app.command()
@guarded
def run(
    bundle: Annotated[
        str, typer.Argument(metavar="BUNDLE_DIR", help="A bundle from `pipeplan export`.")
    ],
    nproc: Annotated[
        int | None, typer.Option("--nproc", help="Processes (default: one per device of the plan).")
    ] = None,
    steps: Annotated[
        int, typer.Option("--steps", help="Iterations to run (the first is warm-up).")
    ] = 5,
    mode: Annotated[str, typer.Option("--mode", help="train or infer.")] = "train",
    backend: Annotated[str, typer.Option("--backend", help="gloo (CPU) or nccl (GPU).")] = "gloo",
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Compare outputs with onnxruntime or gradients with one process."
        ),
    ] = False,
    report: Annotated[
        str | None, typer.Option("--report", help="Write the run report (R.json).")
    ] = None,
    trace: Annotated[
        str | None, typer.Option("--trace", help="Write a Chrome trace: measured and simulated.")
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed for synthetic data and absent weights.")
    ] = 0,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Learning rate (default 1e-3 Adam, 0.05 SGD).")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help=".npz of arrays named after graph inputs (+ targets)."),
    ] = None,
) -> None:
    """Execute a bundle on local processes with torchrun (gloo or NCCL), measured against the plan."""
    from runners.launch import run as run_bundle

    result = run_bundle(
        bundle,
        nproc=nproc,
        steps=steps,
        mode=mode,
        backend=backend,
        check=check,
        seed=seed,
        lr=lr,
        data=data,
        report=report,
        trace=trace,
    )
    from planner.render import print_run

    print_run(result, report=report, trace=trace)
    if result.check is not None and not result.check.passed:
        _fail(
            f"check failed: {result.check.kind} differ by {result.check.max_rel_diff:.2e} (relative), "
            f"tolerance {result.check.tolerance:.0e}",
            1,
        )


@app.command()
@guarded
def schema(
    name: Annotated[str, typer.Argument(help="plan, manifest, cluster or inspect.")],
) -> None:
    """Print the JSON Schema of a pipeplan file format."""
    import json

    from planner.io import schema_of

    print(json.dumps(schema_of(name), indent=2))


@app.command()
@guarded
def cluster(
    spec: Annotated[str, typer.Argument(help="Cluster spec, YAML or JSON.")],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the validated spec as JSON.")
    ] = False,
) -> None:
    """Validate a cluster spec and show its devices and links."""
    from cost.cluster import load_cluster

    c = load_cluster(spec)
    if json_out:
        print(c.model_dump_json(indent=2))
        return
    from planner.render import print_cluster

    print_cluster(c)


from planner.whatif_cli import register as _register_whatif  # noqa: E402

_register_whatif(app)

from planner.calibrate_cli import register as _register_calibrate  # noqa: E402

_register_calibrate(app)


def main() -> None:
    """Entry point: usage errors also come out as one `error:` line with exit code 2."""
    try:  # typer >= 0.16 vendors click; older ones depend on it
        from click.exceptions import UsageError
    except ImportError:
        from typer._click.exceptions import UsageError

    try:
        code = app(standalone_mode=False)
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()
            sys.exit(2)
        command = exc.ctx.command_path if exc.ctx else "pipeplan"
        print(f"error: {exc.format_message()} (see '{command} --help')", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("error: aborted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
