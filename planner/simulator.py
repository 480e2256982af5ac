"""Discrete-event simulation of one pipeline iteration: compute streams, links, memory.

`simulate(schedule, costs)` plays every device's program (`planner.schedule.actions`) and
returns when each action ran, when each message moved, and how much memory each device
held over time.

Compute. Each device has ONE compute stream that runs its F/B/W actions in program order,
one after the other (no overlap of two computations on a device). `F` of stage s takes
`forward_s[s]`; `B` takes `backward_s[s]` (input and weight gradient together) unless the
schedule splits backward (`split_backward`, zero-bubble schedules: Qi et al., "Zero Bubble
Pipeline Parallelism", ICLR 2024), in which case `B` takes `(1 - f) * backward_s[s]` and
`W` takes `f * backward_s[s]`, `f = weight_grad_fraction[s]`.

Communication is asynchronous, like `torch.distributed.isend` / `irecv`:

* a `SEND` issues its transfer at the moment the device's stream reaches it (that is, when
  the computation before it ends) and does not block the stream, unless the link's host
  moves the bytes (`LinkSpec.send_blocking_seconds`, gloo on CPUs): then the stream is
  held that long after issuing (counted in `send_blocking_s`, not in `busy_s`);
* a `RECV` blocks the stream until the matching transfer (same `message_key()`) has fully
  arrived; a transfer that arrived earlier costs nothing.

A transfer from device a to device b uses the directed link a->b (`costs.link(a, b)`) and
follows the alpha-beta model (Hockney, Parallel Computing 20(3), 1994; `cost.links`): it
waits the link latency alpha once per tensor (`message_count`, default 1), then moves its
bytes at beta = `effective_bytes_per_s`. An isolated message of n bytes therefore takes
exactly `LinkSpec.transfer_seconds(n)` (one tensor), and a message of 0 bytes takes no time
at all (t(0) = 0, as in `cost.links`). Transfers moving bytes on the same directed link at
the same time share its bandwidth equally: egalitarian processor sharing (Kleinrock,
"Time-shared systems: a theoretical treatment", JACM 14(2), 1967), the usual fluid model
of TCP/RDMA flows sharing a bottleneck. Each of k active transfers progresses at beta / k
and the completion times are recomputed at every arrival and completion. The latency
phase does not consume bandwidth. Different directed links are independent (full duplex:
a->b and b->a do not interfere). A SEND/RECV between stages on the same device (the
schedule builders omit them) completes instantly; so does any transfer over a link with
infinite bandwidth (`cost.links.LOCAL_LINK`).

Memory. A device holds `static_bytes[device]` (weights, gradients, optimizer state) for
the whole iteration plus the activations its stages saved for backward:

* `F` of (micro-batch j, stage s) allocates `activation_bytes[s]` when it STARTS (the
  conservative choice: the saved tensors are produced during F, and counting them from the
  start never under-estimates the peak);
* without split backward, `B` frees them when it ENDS (backward reads them throughout);
* with split backward, `B` frees all but `round(weight_grad_keep_fraction * act)` when it
  ends and `W` frees the rest when it ends. The default keep fraction is 1.0: everything
  stays until W, which is how the zero-bubble paper accounts for memory (W frees the
  activations; the inputs of the linear layers, which the weight gradient needs, are most
  of what a transformer layer saves). It is an upper bound; lower it to model a layer
  whose nonlinearity buffers can be dropped after B;
* an `F` with no `B` for it in the device's program (inference) frees its activations when
  it ends.

Gradient buffers for the messages in flight and the receive buffers are not counted.

Step tail. `step_tail_s[device]` (the optimizer step over the device's parameters,
`cost.optimizer`) runs once the device's program has ended and its sends have arrived (the
runner waits for its sends, then steps the optimizer); the iteration ends after it.

Result. `iteration_s` is the time the last action anywhere finishes (compute, a
transfer's arrival, or a step tail); per device `busy_s` is compute time and `idle_s = iteration_s -
busy_s`; `bubble_fraction = 1 - sum(busy_s) / (devices * iteration_s)`. Throughput is the
caller's business (micro-batches * batch / iteration_s).

A RECV whose transfer never arrives (no SEND, or a SEND its device never reaches) raises
`ValueError` naming the blocked devices. The simulation is O(A log A) in the number of
actions (one heap of events; per-link heaps of finishing points for processor sharing).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from cost.links import LinkSpec
from planner.schedule.actions import Action, Schedule

MessageKey = tuple[str, int, int]  # (direction, src_stage, dst_stage)


@dataclass
class SimCosts:
    """Everything the simulator needs to time a schedule (seconds, bytes)."""

    #: Per stage: forward of one micro-batch.
    forward_s: list[float]
    #: Per stage: backward of one micro-batch (input gradient + weight gradient).
    backward_s: list[float]
    #: Per device id -> device id: the directed link used for a transfer.
    link: Callable[[str, str], LinkSpec]
    #: Per stage: share of `backward_s` that is the weight gradient (only used when the
    #: schedule splits backward into B and W).
    weight_grad_fraction: list[float] | None = None
    #: (direction, src_stage, dst_stage) -> bytes of one micro-batch's message; missing -> 0.
    message_bytes: dict[MessageKey, int] = field(default_factory=dict)
    #: Same keys: number of tensors in the message, each paying the link latency; default 1.
    message_count: dict[MessageKey, int] = field(default_factory=dict)
    #: Per device: bytes held all iteration (weights, gradients, optimizer state).
    static_bytes: dict[str, int] = field(default_factory=dict)
    #: Per stage: activation bytes saved per micro-batch (see the module docstring).
    activation_bytes: list[int] | None = None
    #: With split backward: share of a micro-batch's activations still held between B and W.
    weight_grad_keep_fraction: float = 1.0
    #: Per device: work after its program, once per iteration (optimizer step), seconds.
    step_tail_s: dict[str, float] = field(default_factory=dict)


class ComputeEvent(NamedTuple):
    device: str
    op: str
    microbatch: int
    stage: int
    start: float
    end: float


class TransferEvent(NamedTuple):
    src_device: str
    dst_device: str
    direction: str
    microbatch: int
    src_stage: int
    dst_stage: int
    bytes: int
    #: When the SEND was issued.
    start: float
    #: When the last byte arrived (the RECV may complete from then on).
    end: float


@dataclass
class DeviceStats:
    busy_s: float
    idle_s: float
    #: Time the stream spent blocked in RECVs (exposed communication and dependencies).
    recv_wait_s: float
    compute_actions: int
    #: Time the stream spent issuing sends over host-driven links.
    send_blocking_s: float = 0.0
    #: The step tail (optimizer) run after the program.
    tail_s: float = 0.0


@dataclass
class SimResult:
    iteration_s: float
    bubble_fraction: float
    per_device: dict[str, DeviceStats]
    compute_events: list[ComputeEvent]
    transfer_events: list[TransferEvent]
    #: Per device: step function (time, bytes held from then on), static + activations.
    memory: dict[str, list[tuple[float, int]]]
    peak_memory: dict[str, int]


# --------------------------------------------------------------------------- internals

_ISSUE, _JOIN, _DONE = 0, 1, 2


class _Link:
    """A directed link under processor sharing, tracked in 'service' units: every active
    transfer has received S bytes of service since the link's epoch, S growing at
    beta / k; a transfer joining at S0 with n bytes finishes when S reaches S0 + n."""

    __slots__ = ("beta", "service", "updated", "finishing", "version")

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.service = 0.0
        self.updated = 0.0
        self.finishing: list[tuple[float, int]] = []  # (finish service, transfer id)
        self.version = 0

    def advance(self, now: float) -> None:
        if self.finishing and now > self.updated:
            self.service += (now - self.updated) * self.beta / len(self.finishing)
        self.updated = now

    def next_completion(self) -> float:
        target = self.finishing[0][0]
        return self.updated + max(0.0, target - self.service) * len(self.finishing) / self.beta


def _check_costs(schedule: Schedule, costs: SimCosts) -> None:
    n = schedule.stages
    for name in ("forward_s", "backward_s", "weight_grad_fraction", "activation_bytes"):
        values = getattr(costs, name)
        if values is not None and len(values) < n:
            raise ValueError(f"SimCosts.{name} has {len(values)} entries, the schedule {n} stages")
    for name in ("forward_s", "backward_s"):
        for s, v in enumerate(getattr(costs, name)[:n]):
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"SimCosts.{name}[{s}] must be finite and >= 0 (got {v})")
    if costs.weight_grad_fraction is not None:
        for s, f in enumerate(costs.weight_grad_fraction[:n]):
            if not 0.0 <= f <= 1.0:
                raise ValueError(f"SimCosts.weight_grad_fraction[{s}] must be in [0, 1] (got {f})")
    if not 0.0 <= costs.weight_grad_keep_fraction <= 1.0:
        raise ValueError(
            f"SimCosts.weight_grad_keep_fraction must be in [0, 1] (got {costs.weight_grad_keep_fraction})"
        )
    for device, tail in costs.step_tail_s.items():
        if not (tail >= 0 and math.isfinite(tail)):
            raise ValueError(
                f"SimCosts.step_tail_s[{device!r}] must be finite and >= 0 (got {tail})"
            )
    if schedule.split_backward and costs.weight_grad_fraction is None:
        raise ValueError("the schedule splits backward: SimCosts.weight_grad_fraction is required")


def _check_messages(programs: dict[str, list[Action]], stages: int) -> None:
    sends: dict[tuple, str] = {}
    recvs: dict[tuple, str] = {}
    for device, program in programs.items():
        for a in program:
            if a.op in ("SEND", "RECV"):
                if a.peer_stage is None or a.direction is None:
                    raise ValueError(f"{device}: {a.op} needs peer_stage and direction ({a!r})")
                if not (0 <= a.stage < stages and 0 <= a.peer_stage < stages):
                    raise ValueError(f"{device}: {a.label()} names a stage outside 0..{stages - 1}")
                seen = sends if a.op == "SEND" else recvs
                key = a.message_key()
                if key in seen:
                    raise ValueError(
                        f"message {key} is {a.op.lower()}ed twice (on {seen[key]} and {device})"
                    )
                seen[key] = device


def simulate(schedule: Schedule, costs: SimCosts) -> SimResult:
    """Play one iteration of `schedule` (see the module docstring for the semantics)."""
    _check_costs(schedule, costs)
    programs = schedule.actions
    devices = schedule.devices() + [d for d in programs if d not in schedule.stage_device]
    _check_messages(programs, schedule.stages)
    split = schedule.split_backward
    stage_device = schedule.stage_device
    fwd, bwd = costs.forward_s, costs.backward_s
    wfrac = costs.weight_grad_fraction or [0.0] * schedule.stages
    act = costs.activation_bytes or [0] * schedule.stages
    keep_frac = costs.weight_grad_keep_fraction

    # Which (microbatch, stage) have a B / W on each device: decides when activations go.
    has_b: set[tuple[int, int]] = set()
    has_w: set[tuple[int, int]] = set()
    for device, program in programs.items():
        for a in program:
            if a.op == "B":
                has_b.add((a.microbatch, a.stage))
            elif a.op == "W":
                if not split:
                    raise ValueError(
                        f"{device}: W action {a.label()} but the schedule does not split backward"
                    )
                has_w.add((a.microbatch, a.stage))

    def duration(a: Action) -> float:
        s = a.stage
        if a.op == "F":
            return fwd[s]
        if a.op == "B":
            return bwd[s] * (1.0 - wfrac[s]) if split else bwd[s]
        return bwd[s] * wfrac[s]  # W

    compute_events: list[ComputeEvent] = []
    busy = dict.fromkeys(devices, 0.0)
    waited = dict.fromkeys(devices, 0.0)
    send_block = dict.fromkeys(devices, 0.0)
    count = dict.fromkeys(devices, 0)
    mem_now = {d: int(costs.static_bytes.get(d, 0)) for d in devices}
    memory: dict[str, list[tuple[float, int]]] = {d: [(0.0, mem_now[d])] for d in devices}

    def mem_change(device: str, t: float, delta: int) -> None:
        if delta == 0:
            return
        mem_now[device] += delta
        steps = memory[device]
        if steps[-1][0] == t:
            steps[-1] = (t, mem_now[device])
        else:
            steps.append((t, mem_now[device]))

    # Transfers: id -> [src_dev, dst_dev, key, bytes, issue time, end time]
    transfers: list[list] = []
    arrived: dict[tuple, float] = {}
    waiting: dict[tuple, str] = {}
    links: dict[tuple[str, str], _Link] = {}
    link_specs: dict[tuple[str, str], LinkSpec] = {}
    events: list[tuple[float, int, int, object]] = []
    seq = 0

    def push(t: float, kind: int, payload: object) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, payload))

    pc = dict.fromkeys(programs, 0)
    clock = dict.fromkeys(programs, 0.0)

    def spec_of(src: str, dst: str) -> LinkSpec:
        spec = link_specs.get((src, dst))
        if spec is None:
            spec = link_specs[(src, dst)] = costs.link(src, dst)
        return spec

    def run(device: str, t: float) -> None:
        """Advance `device` from time `t` until its next unsatisfied RECV or its end."""
        program = programs[device]
        i = pc[device]
        while i < len(program):
            a = program[i]
            op = a.op
            if op == "SEND":
                push(t, _ISSUE, (device, a))
                dst = stage_device[a.peer_stage]
                if dst != device:
                    mkey = (a.direction, a.stage, a.peer_stage)
                    nbytes = int(costs.message_bytes.get(mkey, 0))
                    hold = spec_of(device, dst).send_blocking_seconds(
                        nbytes, int(costs.message_count.get(mkey, 1))
                    )
                    send_block[device] += hold
                    t += hold
            elif op == "RECV":
                key = a.message_key()
                done = arrived.get(key)
                if done is None:
                    waiting[key] = device
                    pc[device], clock[device] = i, t
                    return
                if done > t:
                    waited[device] += done - t
                    t = done
            else:
                d = duration(a)
                end = t + d
                compute_events.append(ComputeEvent(device, op, a.microbatch, a.stage, t, end))
                busy[device] += d
                count[device] += 1
                mb_stage = (a.microbatch, a.stage)
                size = act[a.stage]
                if op == "F":
                    mem_change(device, t, size)
                    if mb_stage not in has_b:
                        mem_change(device, end, -size)
                elif op == "B":
                    if split and mb_stage in has_w:
                        mem_change(device, end, -(size - round(keep_frac * size)))
                    else:
                        mem_change(device, end, -size)
                else:
                    mem_change(device, end, -round(keep_frac * size))
                t = end
            i += 1
        pc[device], clock[device] = i, t

    def complete(tid: int, t: float) -> None:
        record = transfers[tid]
        record[5] = t
        key = record[2]
        arrived[key] = t
        device = waiting.pop(key, None)
        if device is not None:
            start = clock[device]
            if t > start:
                waited[device] += t - start
            pc[device] += 1  # past the RECV
            run(device, max(start, t))

    def schedule_done(lk: tuple[str, str], link: _Link) -> None:
        link.version += 1
        if link.finishing:
            push(link.next_completion(), _DONE, (lk, link.version))

    for device in programs:
        run(device, 0.0)

    while events:
        t, _, kind, payload = heapq.heappop(events)
        if kind == _ISSUE:
            src, a = payload
            direction, mb, s_src, s_dst = a.message_key()
            dst = stage_device[s_dst]
            mkey = (direction, s_src, s_dst)
            nbytes = int(costs.message_bytes.get(mkey, 0))
            tid = len(transfers)
            transfers.append([src, dst, a.message_key(), nbytes, t, t])
            if src == dst or nbytes <= 0:
                complete(tid, t)
                continue
            lk = (src, dst)
            spec = spec_of(src, dst)
            latency = spec.latency_us * 1e-6 * int(costs.message_count.get(mkey, 1))
            if latency > 0:
                push(t + latency, _JOIN, tid)
                continue
            kind, payload = _JOIN, tid  # join right away
        if kind == _JOIN:
            tid = payload
            src, dst, _key, nbytes = transfers[tid][:4]
            lk = (src, dst)
            beta = link_specs[lk].effective_bytes_per_s
            if math.isinf(beta):
                complete(tid, t)
                continue
            link = links.get(lk)
            if link is None:
                link = links[lk] = _Link(beta)
            link.advance(t)
            heapq.heappush(link.finishing, (link.service + nbytes, tid))
            schedule_done(lk, link)
        elif kind == _DONE:
            lk, version = payload
            link = links[lk]
            if version != link.version:
                continue  # superseded by a later arrival or completion
            link.advance(t)
            target = link.finishing[0][0]
            link.service = max(link.service, target)
            finished = []
            while link.finishing and link.finishing[0][0] <= target * (1 + 1e-12):
                finished.append(heapq.heappop(link.finishing)[1])
            schedule_done(lk, link)
            for tid in finished:
                complete(tid, t)

    blocked = [d for d in programs if pc[d] < len(programs[d])]
    if blocked:
        sent = {a.message_key(): d for d, p in programs.items() for a in p if a.op == "SEND"}
        lines = []
        for d in blocked[:4]:
            a = programs[d][pc[d]]
            key = a.message_key()
            why = (
                f"its SEND on {sent[key]} is never reached"
                if key in sent
                else "no program SENDs it"
            )
            lines.append(f"{d} at action #{pc[d]} ({a.label()}) at t={clock[d]:.6g}s: {why}")
        more = f" (and {len(blocked) - 4} more devices)" if len(blocked) > 4 else ""
        raise ValueError("simulation deadlocked: " + "; ".join(lines) + more)

    transfer_events = [
        TransferEvent(src, dst, key[0], key[1], key[2], key[3], nbytes, start, end)
        for src, dst, key, nbytes, start, end in transfers
    ]
    finished = {d: clock.get(d, 0.0) for d in devices}
    for e in transfer_events:
        if e.src_device in finished:
            finished[e.src_device] = max(finished[e.src_device], e.end)
    tails = {d: float(costs.step_tail_s.get(d, 0.0)) for d in devices}
    iteration = max(
        [finished[d] + tails[d] for d in devices] + [e.end for e in transfer_events] + [0.0],
    )
    per_device = {
        d: DeviceStats(
            busy_s=busy[d],
            idle_s=max(0.0, iteration - busy[d]),
            recv_wait_s=waited[d],
            compute_actions=count[d],
            send_blocking_s=send_block[d],
            tail_s=tails[d],
        )
        for d in devices
    }
    total_busy = sum(busy.values())
    bubble = 1.0 - total_busy / (len(devices) * iteration) if iteration > 0 and devices else 0.0
    peak = {d: max(v for _, v in steps) for d, steps in memory.items()}
    return SimResult(
        iteration_s=iteration,
        bubble_fraction=bubble,
        per_device=per_device,
        compute_events=compute_events,
        transfer_events=transfer_events,
        memory=memory,
        peak_memory=peak,
    )
