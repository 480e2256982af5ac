"""Where planning time goes: named phases, recorded only when someone asks.

    with recording() as phases:
        plan(...)
    print(phases)        # {"load": 0.41, "price": 0.12, ..., "milp solve": 2.9}

`phase(name)` wraps a step of the data path (load, price, layers, problem, baselines,
bound, milp build, milp solve, simulate, assemble); outside `recording()` it costs one
context-variable read. Times are exclusive: a phase entered inside another (pricing
inside loading) pauses the outer one, so the phases add up to the wall time they cover.
A phase entered several times (the MILP solved twice, a plan per micro-batch count)
accumulates. `pipeplan plan --timings` prints them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_PHASES: ContextVar[dict[str, float] | None] = ContextVar("pipeplan_phases", default=None)
#: the phases entered and not yet left: [name, time it last (re)started]
_STACK: ContextVar[list[list] | None] = ContextVar("pipeplan_phase_stack", default=None)


@contextmanager
def recording() -> Iterator[dict[str, float]]:
    """Collect the seconds of every phase run inside the block, in first-entered order."""
    phases: dict[str, float] = {}
    token, stack_token = _PHASES.set(phases), _STACK.set([])
    try:
        yield phases
    finally:
        _PHASES.reset(token)
        _STACK.reset(stack_token)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as phase `name` when a `recording()` is active."""
    phases, stack = _PHASES.get(), _STACK.get()
    if phases is None or stack is None:
        yield
        return
    now = time.perf_counter()
    if stack:  # pause the enclosing phase
        outer = stack[-1]
        phases[outer[0]] = phases.get(outer[0], 0.0) + now - outer[1]
    stack.append([name, now])
    try:
        yield
    finally:
        now = time.perf_counter()
        _, started = stack.pop()
        phases[name] = phases.get(name, 0.0) + now - started
        if stack:  # resume it
            stack[-1][1] = now
