"""Turn per-device compute orders into full programs with SEND/RECV, deadlock-free.

The schedule modules (`gpipe`, `one_f_one_b`, `interleaved`, `zero_bubble`) only say in
which order each device computes. `build_schedule` adds the communication:

1. It builds one global sequential order of all compute actions by repeatedly running a
   device whose next compute action has its dependencies met: F(mb, s) needs F(mb, s - 1);
   B(mb, s) needs F(mb, s) and B(mb, s + 1) (the last stage only F(mb, s)); W(mb, s)
   needs B(mb, s). Among the devices that can run, it takes the one whose action would
   start first in a unit-time simulation (F = B = W = 1, an unsplit B = 2), receivers
   first on ties, then the lower device, so the order resembles a real run.
2. When a compute action on stage t consumes a message from another device (F(mb, t) the
   forward message over boundary t - 1 -> t; B(mb, t) the backward message over boundary
   t + 1 -> t), the message event goes immediately before it in the global order.
3. The global order is projected onto each device: a message event becomes a SEND in the
   sender's program and a RECV in the receiver's, at that position.

Executing the global order one event at a time is a valid run of the projected programs in
which every SEND meets its RECV with both at the heads of their devices, so the programs
are deadlock-free even when sends and receives both block (rendezvous), and a fortiori
with eager (buffered) sends. If no device can progress the compute orders are inconsistent
and a ValueError says where. When both stages of a boundary sit on the same device no
message is emitted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from planner.schedule import gpipe, interleaved, one_f_one_b, zero_bubble
from planner.schedule.actions import Action, ComputeOp, Kind, Schedule

BoundaryRoutes = tuple[tuple[str, ...], tuple[str, ...]]
KINDS: tuple[Kind, ...] = ("gpipe", "1f1b", "interleaved", "zb")


def build_schedule(
    kind: Kind,
    *,
    stage_device: Sequence[str],
    microbatches: int,
    virtual_stages: int = 1,
    routes: Sequence[BoundaryRoutes],
) -> Schedule:
    """The full per-device programs of schedule `kind` for one iteration.

    `stage_device[s]` is the device id of (virtual) stage s. For `interleaved`, with p
    devices and v = `virtual_stages` chunks each, len(stage_device) = p * v and stage s
    must sit on the device of stage s mod p (Megatron-LM's placement); the other kinds
    take one stage per device and `virtual_stages` = 1. `routes[s]` = (names of the
    tensors sent forward over boundary s -> s + 1, names of the floating-point ones among
    them whose gradients travel back s + 1 -> s); len(routes) = stages - 1.

    SEND/RECV actions carry those names in `tensors`, with `direction`, `peer_stage` and
    `microbatch`. A message with no tensors (say, no gradient flows back over a boundary)
    is still emitted: it carries the control dependency that B(mb, s) runs after
    B(mb, s + 1), which keeps every schedule's structure the same.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown schedule kind {kind!r}; expected one of {', '.join(KINDS)}")
    stage_device = list(stage_device)
    stages = len(stage_device)
    if stages < 1:
        raise ValueError("stage_device is empty: a pipeline needs at least 1 stage")
    if virtual_stages < 1:
        raise ValueError(f"virtual_stages must be at least 1, got {virtual_stages}")
    if kind == "interleaved":
        if stages % virtual_stages:
            raise ValueError(
                f"interleaved: {stages} stages is not a multiple of virtual_stages = {virtual_stages}"
            )
        p = stages // virtual_stages
        for s in range(stages):
            if stage_device[s] != stage_device[s % p]:
                raise ValueError(
                    f"interleaved: stage {s} is on {stage_device[s]!r} but must share the device "
                    f"of stage {s % p} ({stage_device[s % p]!r}): stage s goes on device s mod {p}"
                )
        _check_distinct(stage_device[:p], "interleaved: the first p stages")
        orders = interleaved.compute_order(p, microbatches, virtual_stages)
    else:
        if virtual_stages != 1:
            raise ValueError(
                f"{kind}: virtual_stages must be 1 (only interleaved has chunks), got {virtual_stages}"
            )
        _check_distinct(stage_device, f"{kind}: stages")
        module = {"gpipe": gpipe, "1f1b": one_f_one_b, "zb": zero_bubble}[kind]
        orders = module.compute_order(stages, microbatches)
    return schedule_from_orders(
        kind,
        orders,
        stage_device=stage_device,
        microbatches=microbatches,
        virtual_stages=virtual_stages,
        routes=routes,
        split_backward=kind == "zb",
    )


def schedule_from_orders(
    kind: Kind,
    orders: Mapping[int, Sequence[ComputeOp]],
    *,
    stage_device: Sequence[str],
    microbatches: int,
    virtual_stages: int = 1,
    routes: Sequence[BoundaryRoutes],
    split_backward: bool = False,
) -> Schedule:
    """Insert communication into given compute orders (see the module docstring).

    `orders[d]` is the compute order of the d-th distinct device of `stage_device` (in
    order of first appearance). Raises ValueError if the orders are incomplete, put a stage
    on the wrong device, or cannot all run (a dependency cycle).
    """
    stage_device = list(stage_device)
    stages = len(stage_device)
    m = microbatches
    devices = list(dict.fromkeys(stage_device))
    _check_routes(routes, stages)
    if sorted(orders) != list(range(len(devices))):
        raise ValueError(
            f"compute orders are keyed {sorted(orders)}, expected devices 0..{len(devices) - 1}"
        )
    _check_complete(orders, devices, stage_device, m, split_backward)

    def device_of(stage: int) -> int:
        return devices.index(stage_device[stage])

    dev_index = [device_of(s) for s in range(stages)]
    cost = {"F": 1, "B": 1 if split_backward else 2, "W": 1}
    finish: dict[ComputeOp, int] = {}
    free = [0] * len(devices)
    heads = [0] * len(devices)
    programs: list[list[Action]] = [[] for _ in devices]
    remaining = sum(len(o) for o in orders.values())

    def dependencies(a: ComputeOp) -> list[ComputeOp]:
        op, mb, s = a
        if op == "F":
            return [("F", mb, s - 1)] if s > 0 else []
        if op == "B":
            return [("F", mb, s)] + ([("B", mb, s + 1)] if s < stages - 1 else [])
        return [("B", mb, s)]

    def consumed(a: ComputeOp) -> tuple[str, int, int] | None:
        """(direction, src, dst) of the message compute action `a` receives, if any."""
        op, _, s = a
        if op == "F" and s > 0 and dev_index[s - 1] != dev_index[s]:
            return ("fwd", s - 1, s)
        if op == "B" and s < stages - 1 and dev_index[s + 1] != dev_index[s]:
            return ("bwd", s + 1, s)
        return None

    while remaining:
        best: tuple[int, int, int] | None = None
        for d, order in orders.items():
            if heads[d] == len(order):
                continue
            a = order[heads[d]]
            deps = dependencies(a)
            if any(dep not in finish for dep in deps):
                continue
            start = max([free[d]] + [finish[dep] for dep in deps])
            key = (start, 0 if consumed(a) else 1, d)
            if best is None or key < best:
                best = key
        if best is None:
            blocked = ", ".join(
                f"device {devices[d]!r} at {_label(order[heads[d]])} (waits for "
                + ", ".join(_label(x) for x in dependencies(order[heads[d]]) if x not in finish)
                + ")"
                for d, order in orders.items()
                if heads[d] < len(order)
            )
            raise ValueError(f"inconsistent compute orders, no device can progress: {blocked}")
        start, _, d = best
        a = orders[d][heads[d]]
        message = consumed(a)
        if message is not None:
            direction, src, dst = message
            names = routes[min(src, dst)][0 if direction == "fwd" else 1]
            common = dict(microbatch=a[1], direction=direction, tensors=tuple(names))
            programs[dev_index[src]].append(Action(op="SEND", stage=src, peer_stage=dst, **common))
            programs[d].append(Action(op="RECV", stage=dst, peer_stage=src, **common))
        programs[d].append(Action(op=a[0], microbatch=a[1], stage=a[2]))
        finish[a] = free[d] = start + cost[a[0]]
        heads[d] += 1
        remaining -= 1

    return Schedule(
        kind=kind,
        microbatches=m,
        virtual_stages=virtual_stages,
        stages=stages,
        stage_device=stage_device,
        split_backward=split_backward,
        actions={devices[d]: programs[d] for d in range(len(devices))},
    )


def _label(a: ComputeOp) -> str:
    return f"{a[0]}{a[1]}@{a[2]}"


def _check_distinct(devices: Sequence[str], what: str) -> None:
    seen = Counter(devices)
    twice = sorted(d for d, n in seen.items() if n > 1)
    if twice:
        raise ValueError(
            f"{what} must be on distinct devices; {', '.join(map(repr, twice))} repeats"
        )


def _check_routes(routes: Sequence[BoundaryRoutes], stages: int) -> None:
    if len(routes) != stages - 1:
        raise ValueError(
            f"routes has {len(routes)} entries; {stages} stages have {stages - 1} boundaries"
        )
    for s, entry in enumerate(routes):
        if len(entry) != 2:
            raise ValueError(f"routes[{s}] must be a pair (sent names, gradient names)")
        sent, grads = entry
        extra = [g for g in grads if g not in sent]
        if extra:
            raise ValueError(
                f"routes[{s}]: gradients of {', '.join(extra)} travel back but "
                f"{'it is' if len(extra) == 1 else 'they are'} not sent forward over boundary {s}"
            )


def _check_complete(
    orders: Mapping[int, Sequence[ComputeOp]],
    devices: list[str],
    stage_device: list[str],
    m: int,
    split_backward: bool,
) -> None:
    ops = ("F", "B", "W") if split_backward else ("F", "B")
    expected = Counter(
        (op, mb, s) for s in range(len(stage_device)) for mb in range(m) for op in ops
    )
    got: Counter[ComputeOp] = Counter()
    for d, order in orders.items():
        for a in order:
            op, mb, s = a
            if op not in ops or not 0 <= s < len(stage_device) or not 0 <= mb < m:
                raise ValueError(f"compute order of device {devices[d]!r} has unexpected {a}")
            if stage_device[s] != devices[d]:
                raise ValueError(
                    f"{_label(a)} is in the order of device {devices[d]!r} but stage {s} "
                    f"is on {stage_device[s]!r}"
                )
            got[a] += 1
    if got != expected:
        missing = sorted(expected - got)
        doubled = sorted(got - expected)
        parts = []
        if missing:
            parts.append("missing " + ", ".join(_label(a) for a in missing[:5]))
        if doubled:
            parts.append("repeated " + ", ".join(_label(a) for a in doubled[:5]))
        raise ValueError(f"incomplete compute orders: {'; '.join(parts)}")


def hoist_sends(schedule: Schedule) -> Schedule:
    """Move every SEND up to just after the compute that produced its data.

    `build_schedule` places a SEND where the receiver consumes it, which keeps the programs
    deadlock-free even with blocking sends. A runner that posts sends asynchronously
    (`isend`, `batch_isend_irecv`) should post them as soon as the data exists, so they
    overlap with the compute that follows: this is that order. It is deadlock-free with
    non-blocking sends and blocking receives (`check_schedule(..., semantics="eager")`),
    since a SEND moved earlier never waits for anything.
    """
    actions: dict[str, list[Action]] = {}
    for device, program in schedule.actions.items():
        out: list[Action] = []
        for action in program:
            if action.op != "SEND":
                out.append(action)
                continue
            producer = "F" if action.direction == "fwd" else "B"
            position = len(out)
            while position > 0:
                prev = out[position - 1]
                if (
                    prev.op == producer
                    and prev.microbatch == action.microbatch
                    and prev.stage == action.stage
                ):
                    break
                if (
                    prev.op == "SEND"
                    and prev.microbatch == action.microbatch
                    and prev.stage == action.stage
                ):
                    break  # keep sends of one micro-batch in order
                position -= 1
            out.insert(position, action)
        actions[device] = out
    return schedule.model_copy(update={"actions": actions})


def forward_only(schedule: Schedule) -> Schedule:
    """The inference form of `schedule`: forwards and their messages only (what a run with
    `--mode infer` executes)."""
    actions = {
        d: [x for x in acts if x.op == "F" or (x.op in ("SEND", "RECV") and x.direction == "fwd")]
        for d, acts in schedule.actions.items()
    }
    return schedule.model_copy(update={"actions": actions})
