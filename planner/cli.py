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
