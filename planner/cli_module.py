"""For command modules registered onto the CLI's `app`: the module that defines it, and
whether a command is on it already."""

from __future__ import annotations

import sys

import typer


def module_of(app: typer.Typer):
    """The module defining `app` and the shared helpers: `planner.cli`, or `__main__` when
    run as `python -m planner.cli` (importing `planner.cli` again would make a second copy)."""
    for module in list(sys.modules.values()):
        if getattr(module, "app", None) is app and hasattr(module, "guarded"):
            return module
    from planner import cli

    return cli


def registered(app: typer.Typer, name: str) -> bool:
    """Whether `app` has a command called `name` (by name or callback)."""
    return any(
        c.name == name or getattr(c.callback, "__name__", "") == name
        for c in app.registered_commands
    )
