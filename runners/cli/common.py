"""What every command shares: errors as one `error:` line with an exit code, warnings."""

import functools
import sys

import typer


def fail(message: str, code: int) -> None:
    """Print `error: message` on stderr and exit with `code`."""
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def guarded(fn):
    """Turn `PipeplanError` into one line on stderr and its exit code (2 bad input, 3 does
    not fit); Ctrl-C into `error: interrupted`, 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from cost.errors import PipeplanError

        try:
            return fn(*args, **kwargs)
        except PipeplanError as exc:
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper


def warn(warnings: list[str]) -> None:
    """Each as a `warning:` line on stderr."""
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
