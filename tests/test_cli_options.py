"""The planning options: one source (`PlanConfig`), the same on every planning command."""

from __future__ import annotations

import pytest
import typer

from planner.config import CLI_FLAGS, PlanConfig
from runners.cli.app import app
from runners.cli.options import plan_config

COMMANDS = ("plan", "whatif")


def _options(command: str) -> dict[str, object]:
    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command].params}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_plan_config_field_is_an_option_with_its_default(command):
    options = _options(command)
    for name, field in PlanConfig.model_fields.items():
        flags = CLI_FLAGS.get(name, (f"--{name.replace('_', '-')}",))
        if not flags:
            continue
        assert name in options, f"{command} lacks {flags[0]}"
        option = options[name]
        # a boolean's "--on/--off" declares both names
        names = {n for flag in flags for n in flag.split("/")}
        assert names <= set(option.opts) | set(option.secondary_opts), (option.opts, flags)
        default = field.default
        assert (
            str(option.default) == str(default) if default is not None else option.default is None
        )
        assert field.description and field.description in option.help


def test_the_options_build_the_config_they_name():
    values = {
        name: str(f.default) if name == "microbatches" else f.default
        for name, f in PlanConfig.model_fields.items()
        if CLI_FLAGS.get(name, True)
    }
    assert plan_config(values) == PlanConfig()
    auto = plan_config(values | {"microbatches": "auto", "time_limit_s": 5.0})
    assert auto.auto_microbatches and auto.time_limit_s == 5.0 and auto.microbatches == 8


def test_the_old_strategy_name_is_deprecated_but_works():
    with pytest.warns(DeprecationWarning, match="'dp' is deprecated: use 'pipedream'"):
        assert PlanConfig(strategy="dp").strategy == "pipedream"
