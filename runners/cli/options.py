"""The command line's options: shape and layer options shared by the model commands, and
the planning options, generated from `planner.config.PlanConfig`.

`with_plan_options(command)` gives a command one option per `PlanConfig` field (flag from
`planner.config.CLI_FLAGS` or the field's name, help from its description, default from
its default, choices from its `Literal` type) and calls it with the validated `config`.
So an option is declared once, in `PlanConfig`, and `plan` and `whatif` cannot drift
apart. `--microbatches` also takes `auto` (`auto_microbatches`).
"""

import functools
import inspect
import sys
import typing
import warnings
from typing import Annotated

import typer

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
KeepMergedOpt = Annotated[
    bool,
    typer.Option(
        "--keep-merged-weights",
        help="Keep weights the exporter merged with equal ones as shared weights "
        "(default: separate them into their own parameters, as torch has them).",
    ),
]
ClusterOpt = Annotated[str, typer.Option("--cluster", "-c", help="Cluster spec, YAML or JSON.")]


def bindings(dim: list[str] | None, batch: int | None, input_shape: list[str] | None):
    """The `ShapeBindings` the shape options describe."""
    from cost.errors import PipeplanError
    from planner.graph.shapes import ShapeBindings, parse_dim_binding, parse_input_shape

    if batch is not None and batch <= 0:
        raise PipeplanError(f"--batch must be positive (got {batch})")
    return ShapeBindings(
        dims=dict(parse_dim_binding(d) for d in dim or []),
        batch=batch,
        input_shapes=dict(parse_input_shape(s) for s in input_shape or []),
    )


def config_from_options(model, **options):
    """Validate settings into the pydantic `model`; one line naming the bad option."""
    from pydantic import ValidationError

    from cost.errors import PipeplanError

    try:
        return model(**options)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise PipeplanError(f"bad setting {field}={err.get('input')!r}: {msg}") from None


def plan_config(options: dict):
    """The `PlanConfig` of the planning options' values (`--microbatches auto` included);
    deprecations are printed as `warning:` lines."""
    from planner.config import PlanConfig

    options = dict(options)
    microbatches = str(options.pop("microbatches")).strip()
    if microbatches.lower() == "auto":
        options["auto_microbatches"] = True
    else:
        options["microbatches"] = microbatches
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        config = config_from_options(PlanConfig, **options)
    for w in caught:
        if issubclass(w.category, DeprecationWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    return config


def _flags(name: str) -> tuple[str, ...]:
    from planner.config import CLI_FLAGS

    return CLI_FLAGS.get(name, (f"--{name.replace('_', '-')}",))


def _choices(annotation) -> tuple[str, ...]:
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return ()


def plan_option_parameters() -> list[inspect.Parameter]:
    """One keyword-only typer option per `PlanConfig` field that has a flag."""
    from planner.config import TEXT_OPTIONS, PlanConfig

    out = []
    for name, field in PlanConfig.model_fields.items():
        flags = _flags(name)
        if not flags:
            continue
        choices = _choices(field.annotation)
        help_text = field.description or ""
        if choices:
            help_text += f" One of: {', '.join(choices)}."
        if choices or name in TEXT_OPTIONS:
            kind, default = str, str(field.default)
        else:
            kind, default = field.annotation, field.default
        out.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[kind, typer.Option(*flags, help=help_text)],
            )
        )
    return out


def with_plan_options(command):
    """Add the planning options to `command`, which receives them as `config=PlanConfig`."""
    signature = inspect.signature(command, eval_str=True)
    extra = plan_option_parameters()
    names = {p.name for p in extra}
    own = [p for p in signature.parameters.values() if p.name != "config"]

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        options = {name: kwargs.pop(name) for name in list(kwargs) if name in names}
        return command(*args, config=plan_config(options), **kwargs)

    wrapper.__signature__ = signature.replace(parameters=own + extra)
    return wrapper
