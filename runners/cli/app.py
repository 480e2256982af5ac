"""The `pipeplan` command line: a thin layer over the library functions.

Every command parses its options, calls one library function, and renders the result
(`commands`, `whatif`, `calibrate`; tables in `render`). Heavy modules (onnx, networkx,
pulp, torch) are imported inside the commands, so that `pipeplan --help` answers at once.
Bad input raises `PipeplanError`: the CLI prints one `error: ...` line and exits with its
code (2, or 3 when a model cannot fit). The planning options come from
`planner.config.PlanConfig` (`options`). Entry point: `runners.cli.app:main`, also
`python -m runners.cli`.
"""

import sys

import typer

from runners.cli import calibrate, commands, whatif

app = typer.Typer(
    name="pipeplan",
    help="Model-parallel partitioning and pipeline planner for ONNX models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """Plan a pipeline split of an ONNX model over a cluster of devices."""


for _command in (
    commands.inspect,
    commands.plan,
    commands.simulate,
    commands.export,
    commands.run,
    commands.schema,
    commands.cluster,
    whatif.whatif,
    calibrate.calibrate,
):
    app.command(_command.__name__)(_command)


def main() -> None:
    """Entry point: usage errors also come out as one `error:` line with exit code 2."""
    try:  # typer >= 0.16 vendors click (whether or not click is installed too)
        from typer._click.exceptions import UsageError
    except ImportError:  # older typer depends on click
        from click.exceptions import UsageError

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
