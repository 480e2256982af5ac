"""pipeplan's planner: ONNX graph -> layers -> partition -> schedule -> simulation -> plan.

`from planner import plan, PlanConfig, ShapeBindings` reaches the public API; the names
are imported on first use, so `import planner` stays cheap and never imports torch.
Packages in data-flow order: `graph`, `partition`, `schedule`, `simulate`, `whatif`; then
`api` (`plan`), `assemble` (the plan file's content) and `plan_file` (its format).
"""

from __future__ import annotations

import importlib

#: public name -> module that defines it
_EXPORTS = {
    "plan": "planner.api",
    "plan_graph": "planner.api",
    "PlanConfig": "planner.config",
    "Plan": "planner.plan_file",
    "load_plan": "planner.plan_file",
    "ShapeBindings": "planner.graph.shapes",
    "inspect_model": "planner.graph.inspect",
    "InspectReport": "planner.graph.inspect",
    "simulate_plan": "planner.simulate.replay",
    "SimulationReport": "planner.simulate.replay",
    "WhatIfReport": "planner.whatif.analysis",
    "PipeplanError": "cost.errors",
    "DoesNotFitError": "cost.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'planner' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
