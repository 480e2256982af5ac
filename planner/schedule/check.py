"""Verify a `Schedule`: complete, dependency-respecting, and free of deadlock.

`check_schedule` runs three checks in turn and raises `ScheduleError` on the first that
fails, listing (up to a handful of) the offending actions:

1. completeness: one F and one B per (stage, micro-batch), and one W when the backward is
   split (none otherwise), each on its stage's device; every SEND has exactly one RECV with
   the same message key on the peer stage's device, and vice versa; messages only go
   between neighbouring stages on different devices, in the right direction;
2. dependencies, in each device's order: F(mb, s) after F(mb, s - 1) (same device) or after
   the RECV fwd of (mb, s - 1 -> s); B(mb, s) after F(mb, s) and after B(mb, s + 1) or the
   RECV bwd of (mb, s + 1 -> s); W after B; a SEND after the compute that produces it;
3. deadlock: the programs are executed, round-robin over the devices, advancing any device
   whose head action can proceed. Compute always proceeds (its inputs were checked in 2).
   Under "rendezvous" semantics a SEND and its RECV proceed together, only when both are at
   the heads of their devices; under "eager" semantics a SEND always proceeds and a RECV
   waits until its SEND was issued. If devices are left unfinished and none can advance,
   the error names each blocked device and its head action.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Literal

from planner.schedule.actions import Action, Schedule

Semantics = Literal["rendezvous", "eager"]
MessageKey = tuple[str, int, int, int]
_SHOWN = 6


class ScheduleError(ValueError):
    """A schedule is incomplete, breaks a data dependency, or deadlocks."""


def check_schedule(schedule: Schedule, semantics: Semantics = "rendezvous") -> None:
    """Raise `ScheduleError` unless `schedule` is complete, respects the data dependencies
    in every device's order, and runs to the end under `semantics` ("rendezvous": SEND and
    RECV both block until they meet; "eager": SEND never blocks, RECV waits for its SEND)."""
    if semantics not in ("rendezvous", "eager"):
        raise ValueError(f"semantics must be 'rendezvous' or 'eager', got {semantics!r}")
    _check_complete(schedule)
    _check_dependencies(schedule)
    _check_runs(schedule, semantics)


def peak_in_flight(schedule: Schedule) -> dict[int, int]:
    """Per stage, the most micro-batches whose F is done and whose B (W when the backward is
    split, since activations are kept until the weight gradient) is not, in program order."""
    release = "W" if schedule.split_backward else "B"
    live: Counter[int] = Counter()
    peak = {s: 0 for s in range(schedule.stages)}
    for program in schedule.actions.values():
        for a in program:
            if a.op == "F":
                live[a.stage] += 1
                peak[a.stage] = max(peak[a.stage], live[a.stage])
            elif a.op == release:
                live[a.stage] -= 1
    return peak


def _fail(what: str, problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
        raise ScheduleError(f"{what}: {'; '.join(problems[:_SHOWN])}{more}")


def _check_complete(schedule: Schedule) -> None:
    S, m = schedule.stages, schedule.microbatches
    problems: list[str] = []
    if len(schedule.stage_device) != S:
        _fail("malformed schedule", [f"{len(schedule.stage_device)} stage devices for {S} stages"])
    unknown = sorted(set(schedule.actions) - set(schedule.stage_device))
    if unknown:
        problems.append(f"programs for devices that hold no stage: {', '.join(unknown)}")
    ops = ("F", "B", "W") if schedule.split_backward else ("F", "B")
    computes: Counter[tuple[str, int, int]] = Counter()
    sends: dict[MessageKey, list[str]] = defaultdict(list)
    recvs: dict[MessageKey, list[str]] = defaultdict(list)
    for device, program in schedule.actions.items():
        for a in program:
            if not 0 <= a.stage < S or not 0 <= a.microbatch < m:
                problems.append(f"{a.label()} on {device}: stage or micro-batch out of range")
                continue
            if schedule.stage_device[a.stage] != device:
                problems.append(
                    f"{a.label()} is on {device} but stage {a.stage} is on "
                    f"{schedule.stage_device[a.stage]}"
                )
            if a.is_compute:
                if a.op not in ops:
                    problems.append(f"{a.label()} on {device}: W without a split backward")
                computes[a.op, a.microbatch, a.stage] += 1
                continue
            problem = _message_problem(schedule, a)
            if problem:
                problems.append(f"{a.label()} on {device}: {problem}")
                continue
            (sends if a.op == "SEND" else recvs)[a.message_key()].append(device)
    for s in range(S):
        for mb in range(m):
            for op in ops:
                n = computes[op, mb, s]
                if n != 1:
                    problems.append(f"{op}{mb}@{s} appears {n} times, expected once")
    for key in sorted(set(sends) | set(recvs)):
        ns, nr = len(sends.get(key, [])), len(recvs.get(key, []))
        if (ns, nr) != (1, 1):
            direction, mb, src, dst = key
            problems.append(
                f"message {direction} mb{mb} {src}->{dst} has {ns} SEND and {nr} RECV, "
                "expected one each"
            )
    _fail("incomplete schedule", problems)


def _message_problem(schedule: Schedule, a: Action) -> str | None:
    if a.peer_stage is None or a.direction not in ("fwd", "bwd"):
        return "a message needs peer_stage and direction"
    if not 0 <= a.peer_stage < schedule.stages:
        return f"peer stage {a.peer_stage} out of range"
    _, _, src, dst = a.message_key()
    if dst != src + (1 if a.direction == "fwd" else -1):
        return f"a {a.direction} message cannot go from stage {src} to stage {dst}"
    if schedule.stage_device[src] == schedule.stage_device[dst]:
        return "both stages are on the same device"
    return None


def _check_dependencies(schedule: Schedule) -> None:
    S = schedule.stages
    problems: list[str] = []
    for device, program in schedule.actions.items():
        done: set[tuple] = set()

        def need(before: tuple, a: Action, device: str = device, done: set = done) -> None:
            if before not in done:
                problems.append(f"{a.label()} on {device} is not preceded by {_describe(before)}")

        for a in program:
            mb, s = a.microbatch, a.stage
            on_device = schedule.stage_device
            if a.op == "F" and s > 0:
                if on_device[s - 1] == on_device[s]:
                    need(("F", mb, s - 1), a)
                else:
                    need(("RECV", "fwd", mb, s - 1, s), a)
            elif a.op == "B":
                need(("F", mb, s), a)
                if s < S - 1:
                    if on_device[s + 1] == on_device[s]:
                        need(("B", mb, s + 1), a)
                    else:
                        need(("RECV", "bwd", mb, s + 1, s), a)
            elif a.op == "W":
                need(("B", mb, s), a)
            elif a.op == "SEND":
                need(("F" if a.direction == "fwd" else "B", mb, s), a)
            if a.is_compute:
                done.add((a.op, mb, s))
            else:
                done.add((a.op, *a.message_key()))
    _fail("dependency violated", problems)


def _describe(key: tuple) -> str:
    if key[0] in ("F", "B", "W"):
        return f"{key[0]}{key[1]}@{key[2]}"
    _, direction, mb, src, dst = key
    return f"RECV {direction} mb{mb} {src}->{dst}"


def _check_runs(schedule: Schedule, semantics: Semantics) -> None:
    programs = {d: p for d, p in schedule.actions.items() if p}
    heads = dict.fromkeys(programs, 0)
    sent: set[MessageKey] = set()

    def head(d: str) -> Action | None:
        return programs[d][heads[d]] if heads[d] < len(programs[d]) else None

    # where each RECV waits, to find a SEND's partner under rendezvous semantics
    recv_device = {a.message_key(): d for d, p in programs.items() for a in p if a.op == "RECV"}
    progress = True
    while progress:
        progress = False
        for d in programs:
            while (a := head(d)) is not None:
                if a.is_compute:
                    heads[d] += 1
                elif a.op == "SEND" and semantics == "eager":
                    sent.add(a.message_key())
                    heads[d] += 1
                elif a.op == "RECV" and semantics == "eager":
                    if a.message_key() not in sent:
                        break
                    heads[d] += 1
                elif a.op == "SEND":
                    peer = recv_device[a.message_key()]
                    b = head(peer)
                    if b is None or b.op != "RECV" or b.message_key() != a.message_key():
                        break
                    heads[d] += 1
                    heads[peer] += 1
                else:  # RECV under rendezvous: advanced by its SEND
                    break
                progress = True
    blocked = [f"{d} at {a.label()}" for d in programs if (a := head(d)) is not None]
    if blocked:
        raise ScheduleError(
            f"deadlock under {semantics} semantics; blocked devices: " + "; ".join(blocked)
        )
