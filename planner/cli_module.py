"""Find the module that defines the CLI's `app`, for command modules registered onto it."""

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
