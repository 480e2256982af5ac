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
busy_s`; `bubble_fraction = 1 - sum(busy_s + tail_s) / (devices * iteration_s)` (the
optimizer step is work). Throughput is the
caller's business (micro-batches * batch / iteration_s).

A RECV whose transfer never arrives (no SEND, or a SEND its device never reaches) raises
`ValueError` naming the blocked devices. The simulation is O(A log A) in the number of
actions (one heap of events; per-link heaps of finishing points for processor sharing).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import NamedTuple

from cost.links import LinkSpec
from planner.schedule.actions import Action, Schedule
from planner.simulate.costs import SimCosts


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


@dataclass
class _Transfer:
    """One message in flight: issued at `start`, its last byte arrives at `end`."""

    src: str
    dst: str
    key: tuple[str, int, int, int]  # Action.message_key()
    nbytes: int
    start: float
    end: float


def simulate(schedule: Schedule, costs: SimCosts) -> SimResult:
    """Play one iteration of `schedule` (see the module docstring for the semantics)."""
    _check_costs(schedule, costs)
    _check_messages(schedule.actions, schedule.stages)
    engine = _Engine(schedule, costs)
    engine.play()
    return engine.result()


class _Engine:
    """The state of one simulated iteration: device streams, links, the event heap."""

    def __init__(self, schedule: Schedule, costs: SimCosts) -> None:
        self.costs = costs
        self.programs = schedule.actions
        self.devices = schedule.devices() + [
            d for d in self.programs if d not in schedule.stage_device
        ]
        self.split = schedule.split_backward
        self.stage_device = schedule.stage_device
        self.wfrac = costs.weight_grad_fraction or [0.0] * schedule.stages
        self.act = costs.activation_bytes or [0] * schedule.stages
        self.has_b, self.has_w = self._releases()
        devices = self.devices
        self.compute_events: list[ComputeEvent] = []
        self.busy = dict.fromkeys(devices, 0.0)
        self.waited = dict.fromkeys(devices, 0.0)
        self.send_block = dict.fromkeys(devices, 0.0)
        self.count = dict.fromkeys(devices, 0)
        self.mem_now = {d: int(costs.static_bytes.get(d, 0)) for d in devices}
        self.memory: dict[str, list[tuple[float, int]]] = {
            d: [(0.0, self.mem_now[d])] for d in devices
        }
        self.transfers: list[_Transfer] = []
        self.arrived: dict[tuple, float] = {}
        self.waiting: dict[tuple, str] = {}
        self.links: dict[tuple[str, str], _Link] = {}
        self.link_specs: dict[tuple[str, str], LinkSpec] = {}
        self.events: list[tuple[float, int, int, object]] = []
        self.seq = 0
        self.pc = dict.fromkeys(self.programs, 0)
        self.clock = dict.fromkeys(self.programs, 0.0)

    def _releases(self) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
        """Which (microbatch, stage) have a B / W: decides when activations are freed."""
        has_b: set[tuple[int, int]] = set()
        has_w: set[tuple[int, int]] = set()
        for device, program in self.programs.items():
            for a in program:
                if a.op == "B":
                    has_b.add((a.microbatch, a.stage))
                elif a.op == "W":
                    if not self.split:
                        raise ValueError(
                            f"{device}: W action {a.label()} but the schedule does not split "
                            "backward"
                        )
                    has_w.add((a.microbatch, a.stage))
        return has_b, has_w

    # ------------------------------------------------------------------ helpers

    def duration(self, a: Action) -> float:
        s, fwd, bwd = a.stage, self.costs.forward_s, self.costs.backward_s
        if a.op == "F":
            return fwd[s]
        if a.op == "B":
            return bwd[s] * (1.0 - self.wfrac[s]) if self.split else bwd[s]
        return bwd[s] * self.wfrac[s]  # W

    def mem_change(self, device: str, t: float, delta: int) -> None:
        if delta == 0:
            return
        self.mem_now[device] += delta
        steps = self.memory[device]
        if steps[-1][0] == t:
            steps[-1] = (t, self.mem_now[device])
        else:
            steps.append((t, self.mem_now[device]))

    def push(self, t: float, kind: int, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, payload))

    def spec_of(self, src: str, dst: str) -> LinkSpec:
        spec = self.link_specs.get((src, dst))
        if spec is None:
            spec = self.link_specs[(src, dst)] = self.costs.link(src, dst)
        return spec

    # ------------------------------------------------------------------ device streams

    def run(self, device: str, t: float) -> None:
        """Advance `device` from time `t` until its next unsatisfied RECV or its end."""
        program = self.programs[device]
        i = self.pc[device]
        while i < len(program):
            a = program[i]
            if a.op == "SEND":
                t = self._send(device, a, t)
            elif a.op == "RECV":
                done = self.arrived.get(a.message_key())
                if done is None:
                    self.waiting[a.message_key()] = device
                    self.pc[device], self.clock[device] = i, t
                    return
                if done > t:
                    self.waited[device] += done - t
                    t = done
            else:
                t = self._compute(device, a, t)
            i += 1
        self.pc[device], self.clock[device] = i, t

    def _send(self, device: str, a: Action, t: float) -> float:
        """Issue a SEND at `t`; the stream is free again after the send's hold."""
        self.push(t, _ISSUE, (device, a))
        dst = self.stage_device[a.peer_stage]
        if dst == device:
            return t
        mkey = (a.direction, a.stage, a.peer_stage)
        nbytes = int(self.costs.message_bytes.get(mkey, 0))
        hold = self.spec_of(device, dst).send_blocking_seconds(
            nbytes, int(self.costs.message_count.get(mkey, 1))
        )
        self.send_block[device] += hold
        return t + hold

    def _compute(self, device: str, a: Action, t: float) -> float:
        """Run F/B/W from `t`; allocate and free activations (module docstring)."""
        d = self.duration(a)
        end = t + d
        self.compute_events.append(ComputeEvent(device, a.op, a.microbatch, a.stage, t, end))
        self.busy[device] += d
        self.count[device] += 1
        mb_stage = (a.microbatch, a.stage)
        size = self.act[a.stage]
        keep = round(self.costs.weight_grad_keep_fraction * size)
        if a.op == "F":
            self.mem_change(device, t, size)
            if mb_stage not in self.has_b:
                self.mem_change(device, end, -size)
        elif a.op == "B":
            if self.split and mb_stage in self.has_w:
                self.mem_change(device, end, -(size - keep))
            else:
                self.mem_change(device, end, -size)
        else:
            self.mem_change(device, end, -keep)
        return end

    # ------------------------------------------------------------------ transfers

    def complete(self, tid: int, t: float) -> None:
        record = self.transfers[tid]
        record.end = t
        self.arrived[record.key] = t
        device = self.waiting.pop(record.key, None)
        if device is not None:
            start = self.clock[device]
            if t > start:
                self.waited[device] += t - start
            self.pc[device] += 1  # past the RECV
            self.run(device, max(start, t))

    def schedule_done(self, lk: tuple[str, str], link: _Link) -> None:
        link.version += 1
        if link.finishing:
            self.push(link.next_completion(), _DONE, (lk, link.version))

    def issue(self, t: float, src: str, a: Action) -> None:
        """A SEND's message starts: it pays the latency, then joins its link."""
        direction, _, s_src, s_dst = a.message_key()
        dst = self.stage_device[s_dst]
        mkey = (direction, s_src, s_dst)
        nbytes = int(self.costs.message_bytes.get(mkey, 0))
        tid = len(self.transfers)
        self.transfers.append(_Transfer(src, dst, a.message_key(), nbytes, t, t))
        if src == dst or nbytes <= 0:
            self.complete(tid, t)
            return
        spec = self.spec_of(src, dst)
        latency = spec.latency_us * 1e-6 * int(self.costs.message_count.get(mkey, 1))
        if latency > 0:
            self.push(t + latency, _JOIN, tid)
        else:
            self.join(t, tid)

    def join(self, t: float, tid: int) -> None:
        """A message starts moving bytes, sharing its link's bandwidth."""
        record = self.transfers[tid]
        lk = (record.src, record.dst)
        beta = self.link_specs[lk].effective_bytes_per_s
        if math.isinf(beta):
            self.complete(tid, t)
            return
        link = self.links.get(lk)
        if link is None:
            link = self.links[lk] = _Link(beta)
        link.advance(t)
        heapq.heappush(link.finishing, (link.service + record.nbytes, tid))
        self.schedule_done(lk, link)

    def done(self, t: float, lk: tuple[str, str], version: int) -> None:
        """The first transfers on a link finish (unless superseded since)."""
        link = self.links[lk]
        if version != link.version:
            return  # superseded by a later arrival or completion
        link.advance(t)
        target = link.finishing[0][0]
        link.service = max(link.service, target)
        finished = []
        while link.finishing and link.finishing[0][0] <= target * (1 + 1e-12):
            finished.append(heapq.heappop(link.finishing)[1])
        self.schedule_done(lk, link)
        for tid in finished:
            self.complete(tid, t)

    # ------------------------------------------------------------------ the run

    def play(self) -> None:
        """Run every device, then process events until none is left."""
        for device in self.programs:
            self.run(device, 0.0)
        while self.events:
            t, _, kind, payload = heapq.heappop(self.events)
            if kind == _ISSUE:
                self.issue(t, *payload)
            elif kind == _JOIN:
                self.join(t, payload)
            else:
                self.done(t, *payload)
        self._check_finished()

    def _check_finished(self) -> None:
        programs, pc = self.programs, self.pc
        blocked = [d for d in programs if pc[d] < len(programs[d])]
        if not blocked:
            return
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
            lines.append(f"{d} at action #{pc[d]} ({a.label()}) at t={self.clock[d]:.6g}s: {why}")
        more = f" (and {len(blocked) - 4} more devices)" if len(blocked) > 4 else ""
        raise ValueError("simulation deadlocked: " + "; ".join(lines) + more)

    def result(self) -> SimResult:
        devices = self.devices
        transfer_events = [
            TransferEvent(
                r.src, r.dst, r.key[0], r.key[1], r.key[2], r.key[3], r.nbytes, r.start, r.end
            )
            for r in self.transfers
        ]
        finished = {d: self.clock.get(d, 0.0) for d in devices}
        for e in transfer_events:
            if e.src_device in finished:
                finished[e.src_device] = max(finished[e.src_device], e.end)
        tails = {d: float(self.costs.step_tail_s.get(d, 0.0)) for d in devices}
        iteration = max(
            [finished[d] + tails[d] for d in devices] + [e.end for e in transfer_events] + [0.0],
        )
        per_device = {
            d: DeviceStats(
                busy_s=self.busy[d],
                idle_s=max(0.0, iteration - self.busy[d]),
                recv_wait_s=self.waited[d],
                compute_actions=self.count[d],
                send_blocking_s=self.send_block[d],
                tail_s=tails[d],
            )
            for d in devices
        }
        # the optimizer step (tail) is work, not bubble: a one-stage pipeline has none
        total_busy = sum(self.busy.values()) + sum(tails.values())
        bubble = 1.0 - total_busy / (len(devices) * iteration) if iteration > 0 and devices else 0.0
        peak = {d: max(v for _, v in steps) for d, steps in self.memory.items()}
        return SimResult(
            iteration_s=iteration,
            bubble_fraction=bubble,
            per_device=per_device,
            compute_events=self.compute_events,
            transfer_events=transfer_events,
            memory=self.memory,
            peak_memory=peak,
        )
