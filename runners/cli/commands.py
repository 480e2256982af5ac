"""The commands that each call one library function: inspect, cluster, plan, simulate,
export, run, schema. Heavy modules are imported inside each command (never torch at
import time), so `pipeplan --help` answers at once."""

from typing import Annotated

import typer

from cost.files import check_output_file
from planner.config import DEFAULT_MAX_LAYER_SHARE
from runners.cli.common import fail, guarded, warn
from runners.cli.options import (
    BatchOpt,
    ClusterOpt,
    DimOpt,
    InputShapeOpt,
    KeepMergedOpt,
    LayerDepthOpt,
    LayersOpt,
    MaxShareOpt,
    bindings,
    with_plan_options,
)


def schema_of(name: str) -> dict:
    """The JSON Schema of a file format: plan, manifest, cluster or inspect."""
    from cost.cluster import Cluster
    from cost.errors import PipeplanError
    from exporters.manifest import Manifest
    from planner.graph.inspect import InspectReport
    from planner.plan_file import Plan

    models = {"plan": Plan, "manifest": Manifest, "cluster": Cluster, "inspect": InspectReport}
    if name not in models:
        raise PipeplanError(f"unknown schema '{name}' (choose from {', '.join(models)})")
    return models[name].model_json_schema()


@guarded
def inspect(
    model: Annotated[str, typer.Argument(help="ONNX model file.")],
    dim: DimOpt = None,
    batch: BatchOpt = None,
    input_shape: InputShapeOpt = None,
    layers: LayersOpt = None,
    layer_depth: LayerDepthOpt = None,
    max_layer_share: MaxShareOpt = DEFAULT_MAX_LAYER_SHARE,
    keep_merged_weights: KeepMergedOpt = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a table.")
    ] = False,
    show_nodes: Annotated[
        bool, typer.Option("--nodes", help="List each layer's ONNX nodes.")
    ] = False,
    tp: Annotated[
        int | None,
        typer.Option(
            "--tp",
            help="Show which blocks (attention heads, MLPs) split across N tensor-parallel "
            "devices, and why the others do not.",
        ),
    ] = None,
) -> None:
    """Load a model, price every operator, and show its layers."""
    from planner.graph.inspect import inspect_model

    report = inspect_model(
        model,
        bindings(dim, batch, input_shape),
        layers_file=layers,
        layer_depth=layer_depth,
        max_layer_share=max_layer_share,
        keep_merged_weights=keep_merged_weights,
        tensor_parallel=tp,
    )
    warn(report.warnings)
    if json_out:
        print(report.model_dump_json(indent=2))
        return
    from runners.cli.render import print_inspect

    print_inspect(report, show_nodes=show_nodes)


@guarded
@with_plan_options
def plan(
    model: Annotated[str, typer.Argument(help="ONNX model file (one micro-batch).")],
    cluster: ClusterOpt,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Write PLAN.json here.")
    ] = None,
    dim: DimOpt = None,
    batch: BatchOpt = None,
    input_shape: InputShapeOpt = None,
    layers: LayersOpt = None,
    layer_depth: LayerDepthOpt = None,
    keep_merged_weights: KeepMergedOpt = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print PLAN.json to stdout instead of a table.")
    ] = False,
    timings: Annotated[
        bool,
        typer.Option(
            "--timings",
            help="Print where planning time went, per phase (on stderr with --json).",
        ),
    ] = False,
    *,
    config,
) -> None:
    """Split a model across a cluster: fit memory, maximise throughput, explain why."""
    import time

    from cost.files import write_text_atomic
    from cost.timings import recording
    from planner.api import plan as make_plan

    check_output_file(output, "-o")
    started = time.perf_counter()
    with recording() as phases:
        result = make_plan(
            model,
            cluster,
            config,
            bindings(dim, batch, input_shape),
            layers_file=layers,
            layer_depth=layer_depth,
            keep_merged_weights=keep_merged_weights,
        )
    wall = time.perf_counter() - started
    warn(result.warnings)
    if output:
        write_text_atomic(output, result.model_dump_json(indent=2))
    from runners.cli.render import print_plan, print_timings

    if json_out:
        print(result.model_dump_json(indent=2))
    else:
        print_plan(result, output)
    if timings:
        print_timings(phases, wall, stderr=json_out)


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
    check_output_file(trace, "--trace")
    check_output_file(png, "--png")
    from planner.simulate.replay import simulate_plan

    report = simulate_plan(plan_file, trace=trace, png=png)
    if json_out:
        print(report.model_dump_json(indent=2))
        return
    from runners.cli.render import print_simulation

    print_simulation(report, trace=trace, png=png)


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
    from runners.cli.render import print_manifest

    print_manifest(manifest, output)


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
    mode: Annotated[
        str | None,
        typer.Option("--mode", help="train or infer (default: train; infer with onnxruntime)."),
    ] = None,
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
    engine: Annotated[
        str,
        typer.Option(
            "--engine", help="torch (converted graphs) or onnxruntime (the stage files, inference)."
        ),
    ] = "torch",
    providers: Annotated[
        str | None,
        typer.Option(
            "--providers",
            help="onnxruntime: execution providers for every stage, e.g. CUDA,CPU "
            "(default: each device's `providers:`, else CPU).",
        ),
    ] = None,
    stream: Annotated[
        int | None,
        typer.Option("--stream", help="onnxruntime: requests to stream and measure (default 32)."),
    ] = None,
    in_flight: Annotated[
        int | None,
        typer.Option(
            "--in-flight", help="onnxruntime: requests in the pipeline at once (default: stages)."
        ),
    ] = None,
) -> None:
    """Execute a bundle on local processes with torchrun (gloo or NCCL), measured against the plan."""
    check_output_file(report, "--report")
    check_output_file(trace, "--trace")
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
        engine=engine,
        providers=[p for p in providers.split(",") if p.strip()] if providers else None,
        stream=stream,
        in_flight=in_flight,
    )
    from runners.cli.render import print_run

    print_run(result, report=report, trace=trace)
    if result.check is not None and not result.check.passed:
        fail(
            f"check failed: {result.check.kind} differ by {result.check.max_rel_diff:.2e} (relative), "
            f"tolerance {result.check.tolerance:.0e}",
            1,
        )


@guarded
def schema(
    name: Annotated[str, typer.Argument(help="plan, manifest, cluster or inspect.")],
) -> None:
    """Print the JSON Schema of a pipeplan file format."""
    import json

    print(json.dumps(schema_of(name), indent=2))


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
    from runners.cli.render import print_cluster

    print_cluster(c)
