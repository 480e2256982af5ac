"""planner.simulate.engine and planner.simulate.timeline on hand-built schedules with closed-form answers."""

from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cost.links import LOCAL_LINK, LinkSpec
from planner.schedule.actions import Action, Schedule
from planner.simulate.costs import SimCosts
from planner.simulate.engine import simulate
from planner.simulate.timeline import chrome_trace, plot_timeline

FREE = LinkSpec(name="free", bandwidth_GBps=1e6, latency_us=0.0)

# ----------------------------------------------------------------------------- helpers


def _send(mb: int, stage: int, peer: int, direction: str) -> Action:
    return Action(op="SEND", microbatch=mb, stage=stage, peer_stage=peer, direction=direction)


def _recv(mb: int, stage: int, peer: int, direction: str) -> Action:
    return Action(op="RECV", microbatch=mb, stage=stage, peer_stage=peer, direction=direction)


def _forward(mb: int, s: int, p: int) -> list[Action]:
    out = [_recv(mb, s, s - 1, "fwd")] if s > 0 else []
    out.append(Action(op="F", microbatch=mb, stage=s))
    if s < p - 1:
        out.append(_send(mb, s, s + 1, "fwd"))
    return out


def _backward(mb: int, s: int, p: int, split: bool = False) -> list[Action]:
    out = [_recv(mb, s, s + 1, "bwd")] if s < p - 1 else []
    out.append(Action(op="B", microbatch=mb, stage=s))
    if s > 0:
        out.append(_send(mb, s, s - 1, "bwd"))
    if split:
        out.append(Action(op="W", microbatch=mb, stage=s))
    return out


def build(kind: str, p: int, m: int, *, split: bool = False, inference: bool = False) -> Schedule:
    """GPipe or 1F1B (PipeDream-Flush) on p stages, stage s on device f"d{s}"."""
    actions: dict[str, list[Action]] = {}
    for s in range(p):
        prog: list[Action] = []
        if kind == "gpipe" or inference:
            for j in range(m):
                prog += _forward(j, s, p)
            if not inference:
                for j in range(m):
                    prog += _backward(j, s, p, split)
        else:
            warmup = min(p - s - 1, m)
            for j in range(warmup):
                prog += _forward(j, s, p)
            for j in range(m - warmup):
                prog += _forward(j + warmup, s, p)
                prog += _backward(j, s, p, split)
            for j in range(m - warmup, m):
                prog += _backward(j, s, p, split)
        actions[f"d{s}"] = prog
    return Schedule(
        kind="zb" if split else kind,
        microbatches=m,
        stages=p,
        stage_device=[f"d{s}" for s in range(p)],
        split_backward=split,
        actions=actions,
    )


def costs(p: int, tf: float = 1.0, tb: float = 2.0, **kw) -> SimCosts:
    kw.setdefault("link", lambda a, b: FREE)
    return SimCosts(forward_s=[tf] * p, backward_s=[tb] * p, **kw)


# ------------------------------------------------------------------- closed-form timing


@pytest.mark.parametrize("kind", ["gpipe", "1f1b"])
@pytest.mark.parametrize(("p", "m"), [(1, 1), (1, 5), (2, 1), (4, 4), (4, 8), (5, 3), (8, 2)])
@pytest.mark.parametrize(("tf", "tb"), [(1.0, 2.0), (1.0, 1.0), (0.3, 0.7)])
def test_pipeline_iteration_and_bubble(kind, p, m, tf, tb):
    r = simulate(build(kind, p, m), costs(p, tf, tb))
    assert r.iteration_s == pytest.approx((m + p - 1) * (tf + tb), rel=1e-9, abs=1e-12)
    assert r.bubble_fraction == pytest.approx((p - 1) / (m + p - 1), abs=1e-9)
    for stats in r.per_device.values():
        assert stats.busy_s == pytest.approx(m * (tf + tb), rel=1e-12)
        assert stats.idle_s == pytest.approx(r.iteration_s - stats.busy_s, abs=1e-12)
    assert len(r.compute_events) == 2 * m * p


def test_single_stage_is_serial():
    r = simulate(build("1f1b", 1, 7), costs(1, 0.25, 0.5))
    assert r.iteration_s == pytest.approx(7 * 0.75, rel=1e-12)
    assert r.bubble_fraction == pytest.approx(0.0, abs=1e-12)
    assert r.transfer_events == []


def test_split_backward_times_and_order():
    p, m = 3, 4
    c = costs(p, 1.0, 2.0, weight_grad_fraction=[0.25] * p)
    r = simulate(build("1f1b", p, m, split=True), c)
    ev = {(e.op, e.microbatch, e.stage): e for e in r.compute_events}
    assert ev[("B", 0, 1)].end - ev[("B", 0, 1)].start == pytest.approx(1.5)
    assert ev[("W", 0, 1)].end - ev[("W", 0, 1)].start == pytest.approx(0.5)
    # W adds nothing to the work: each device is busy m * (F + B + W) = m * (tf + tb).
    for stats in r.per_device.values():
        assert stats.busy_s == pytest.approx(m * 3.0)
    # Single stage: the iteration is the work.
    r1 = simulate(build("1f1b", 1, m, split=True), costs(1, 1.0, 2.0, weight_grad_fraction=[0.4]))
    assert r1.iteration_s == pytest.approx(m * 3.0)


def test_w_without_split_is_rejected():
    sched = build("1f1b", 2, 2, split=True).model_copy(update={"split_backward": False})
    with pytest.raises(ValueError, match="does not split backward"):
        simulate(sched, costs(2))


def test_short_cost_lists_are_rejected():
    with pytest.raises(ValueError, match="forward_s"):
        simulate(build("gpipe", 3, 2), SimCosts(forward_s=[1.0], backward_s=[1.0] * 3, link=None))


# ------------------------------------------------------------------------ transfers


@pytest.mark.parametrize("latency_us", [0.0, 7.0])
def test_one_message_adds_alpha_plus_n_over_beta(latency_us):
    link = LinkSpec(bandwidth_GBps=10.0, latency_us=latency_us, efficiency=0.8)
    nbytes = 3_000_000
    base = simulate(build("1f1b", 2, 1), costs(2))
    c = costs(2, link=lambda a, b: link, message_bytes={("fwd", 0, 1): nbytes})
    r = simulate(build("1f1b", 2, 1), c)
    expected = latency_us * 1e-6 + nbytes / (10e9 * 0.8)
    assert expected == pytest.approx(link.transfer_seconds(nbytes), rel=1e-15)
    assert r.iteration_s - base.iteration_s == pytest.approx(expected, rel=1e-9)
    (t,) = [t for t in r.transfer_events if t.bytes]
    assert (t.src_device, t.dst_device, t.direction, t.bytes) == ("d0", "d1", "fwd", nbytes)
    assert t.end - t.start == pytest.approx(expected, rel=1e-9)
    assert r.per_device["d1"].recv_wait_s == pytest.approx(1.0 + expected)


def test_message_count_pays_latency_per_tensor():
    link = LinkSpec(bandwidth_GBps=1.0, latency_us=10.0, efficiency=1.0)
    c = costs(
        2,
        link=lambda a, b: link,
        message_bytes={("fwd", 0, 1): 1000},
        message_count={("fwd", 0, 1): 3},
    )
    (t,) = [t for t in simulate(build("gpipe", 2, 1), c).transfer_events if t.bytes]
    assert t.end - t.start == pytest.approx(30e-6 + 1e-6, rel=1e-9)


def _two_messages(second_direction: str, gap: float = 0.0) -> Schedule:
    """d0 sends mb0 at t=0 and, after an F of length `gap`, a second message: mb1 on the
    same link (fwd), or d1 sends mb0's gradient back at t=0 (bwd)."""
    if second_direction == "fwd":
        d0 = [_send(0, 0, 1, "fwd"), Action(op="F", microbatch=1, stage=0), _send(1, 0, 1, "fwd")]
        d1 = [_recv(0, 1, 0, "fwd"), _recv(1, 1, 0, "fwd")]
    else:
        d0 = [_send(0, 0, 1, "fwd"), _recv(0, 0, 1, "bwd")]
        d1 = [_send(0, 1, 0, "bwd"), _recv(0, 1, 0, "fwd")]
    return Schedule(
        kind="gpipe",
        microbatches=2,
        stages=2,
        stage_device=["d0", "d1"],
        actions={"d0": d0, "d1": d1},
    )


def _transfer_costs(nbytes: int, link: LinkSpec, gap: float = 0.0) -> SimCosts:
    return SimCosts(
        forward_s=[gap, 0.0],
        backward_s=[0.0, 0.0],
        link=lambda a, b: link,
        message_bytes={("fwd", 0, 1): nbytes, ("bwd", 1, 0): nbytes},
    )


def test_processor_sharing_on_one_directed_link():
    link = LinkSpec(bandwidth_GBps=2.0, latency_us=0.0, efficiency=1.0)
    n = 4_000_000
    alone = n / 2e9
    shared = simulate(_two_messages("fwd"), _transfer_costs(n, link))
    assert [t.end for t in shared.transfer_events] == pytest.approx([2 * alone, 2 * alone])
    assert shared.iteration_s == pytest.approx(2 * alone, rel=1e-12)
    # Full duplex: the two directions do not share.
    duplex = simulate(_two_messages("bwd"), _transfer_costs(n, link))
    assert [t.end for t in duplex.transfer_events] == pytest.approx([alone, alone])
    assert duplex.iteration_s == pytest.approx(alone, rel=1e-12)


def test_processor_sharing_with_a_late_arrival():
    # The second message starts when the first is half done: the first finishes at 1.5 T,
    # the second at 2 T (work is conserved), T = n / beta.
    link = LinkSpec(bandwidth_GBps=1.0, latency_us=0.0, efficiency=1.0)
    n = 1_000_000
    big_t = n / 1e9
    r = simulate(_two_messages("fwd"), _transfer_costs(n, link, gap=big_t / 2))
    first, second = r.transfer_events
    assert first.end == pytest.approx(1.5 * big_t, rel=1e-9)
    assert second.start == pytest.approx(0.5 * big_t, rel=1e-12)
    assert second.end == pytest.approx(2.0 * big_t, rel=1e-9)


def test_same_device_and_local_link_transfers_are_free():
    # LOCAL_LINK (infinite bandwidth, no latency) moves any size in no time.
    c = costs(2, link=lambda a, b: LOCAL_LINK, message_bytes={("fwd", 0, 1): 10**9})
    r = simulate(build("1f1b", 2, 3), c)
    assert r.iteration_s == pytest.approx(4 * 3.0)
    assert all(t.end == t.start for t in r.transfer_events)
    # Both stages on d0, SEND/RECV between them kept: they take no time, touch no link.
    one = Schedule(
        kind="gpipe",
        microbatches=1,
        stages=2,
        stage_device=["d0", "d0"],
        actions={
            "d0": _forward(0, 0, 2) + _forward(0, 1, 2) + _backward(0, 1, 2) + _backward(0, 0, 2)
        },
    )
    calls = []
    c = costs(2, link=lambda a, b: calls.append((a, b)) or FREE, message_bytes={("fwd", 0, 1): 10})
    r = simulate(one, c)
    assert r.iteration_s == pytest.approx(6.0)
    assert calls == []
    assert r.bubble_fraction == pytest.approx(0.0)


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize(("p", "m"), [(4, 8), (4, 2), (3, 3), (1, 4)])
def test_peak_activation_memory(p, m):
    act, static = 1000, 50_000
    kw = {"activation_bytes": [act] * p, "static_bytes": {f"d{s}": static for s in range(p)}}
    one = simulate(build("1f1b", p, m), costs(p, **kw))
    gp = simulate(build("gpipe", p, m), costs(p, **kw))
    for s in range(p):
        d = f"d{s}"
        assert one.peak_memory[d] == static + min(p - s, m) * act
        assert gp.peak_memory[d] == static + m * act
        for r in (one, gp):
            assert r.memory[d][0] == (0.0, static + (act if s == 0 else 0))  # F0 starts at 0
            assert r.memory[d][-1][1] == static  # everything freed by the end
            times = [t for t, _ in r.memory[d]]
            assert times == sorted(times) and len(set(times)) == len(times)


def test_split_backward_memory_keeps_part_until_w():
    act = 1000
    sched = Schedule(
        kind="zb",
        microbatches=1,
        stages=1,
        stage_device=["d0"],
        split_backward=True,
        actions={"d0": [Action(op=o, microbatch=0, stage=0) for o in "FBW"]},
    )
    c = costs(1, 1.0, 2.0, weight_grad_fraction=[0.5], activation_bytes=[act])
    c.weight_grad_keep_fraction = 0.3
    r = simulate(sched, c)
    assert r.memory["d0"] == [(0.0, act), (2.0, 300), (3.0, 0)]
    c.weight_grad_keep_fraction = 1.0
    assert simulate(sched, c).memory["d0"] == [(0.0, act), (3.0, 0)]


def test_inference_frees_at_forward_end():
    r = simulate(build("gpipe", 2, 3, inference=True), costs(2, activation_bytes=[10, 20]))
    assert r.peak_memory == {"d0": 10, "d1": 20}
    assert r.iteration_s == pytest.approx(4.0)


# ------------------------------------------------------------------------- deadlock


def test_missing_send_deadlocks():
    sched = build("gpipe", 2, 2)
    prog = [a for a in sched.actions["d0"] if not (a.op == "SEND" and a.microbatch == 1)]
    sched = sched.model_copy(update={"actions": {**sched.actions, "d0": prog}})
    with pytest.raises(ValueError, match=r"deadlock.*d1.*no program SENDs it"):
        simulate(sched, costs(2))


def test_cyclic_wait_deadlocks():
    sched = Schedule(
        kind="gpipe",
        microbatches=1,
        stages=2,
        stage_device=["d0", "d1"],
        actions={
            "d0": [_recv(0, 0, 1, "bwd"), _send(0, 0, 1, "fwd")],
            "d1": [_recv(0, 1, 0, "fwd"), _send(0, 1, 0, "bwd")],
        },
    )
    with pytest.raises(ValueError, match="never reached"):
        simulate(sched, costs(2))


def test_duplicate_message_rejected():
    sched = build("gpipe", 2, 1)
    prog = sched.actions["d0"] + [_send(0, 0, 1, "fwd")]
    sched = sched.model_copy(update={"actions": {**sched.actions, "d0": prog}})
    with pytest.raises(ValueError, match="twice"):
        simulate(sched, costs(2))


# ------------------------------------------------------------------ properties, scale


@settings(max_examples=40, deadline=None)
@given(
    p=st.integers(1, 5),
    m=st.integers(1, 6),
    kind=st.sampled_from(["gpipe", "1f1b"]),
    times=st.lists(st.floats(0.01, 3.0), min_size=10, max_size=10),
    nbytes=st.integers(0, 10**7),
)
def test_bounds_hold_for_any_stage_times(p, m, kind, times, nbytes):
    tf, tb = times[:p], times[5 : 5 + p]
    link = LinkSpec(bandwidth_GBps=5.0, latency_us=3.0)
    msgs = {("fwd", s, s + 1): nbytes for s in range(p - 1)}
    msgs |= {("bwd", s + 1, s): nbytes for s in range(p - 1)}
    c = SimCosts(forward_s=tf, backward_s=tb, link=lambda a, b: link, message_bytes=msgs)
    r = simulate(build(kind, p, m), c)
    work = [m * (f + b) for f, b in zip(tf, tb, strict=True)]
    one_mb = sum(tf) + sum(tb) + 2 * (p - 1) * link.transfer_seconds(nbytes)
    assert r.iteration_s >= max(work) * (1 - 1e-12)
    assert r.iteration_s >= one_mb * (1 - 1e-9)
    assert 0.0 <= r.bubble_fraction < 1.0
    assert math.isclose(
        r.bubble_fraction, 1 - sum(work) / (p * r.iteration_s), rel_tol=1e-9, abs_tol=1e-12
    )
    # Per device, compute never overlaps and follows program order.
    last = {}
    for e in r.compute_events:
        assert e.start >= last.get(e.device, 0.0) - 1e-12
        last[e.device] = e.end
    # Every RECV'd message arrived before the consumer started.
    arrival = {
        (t.direction, t.microbatch, t.src_stage, t.dst_stage): t.end for t in r.transfer_events
    }
    for e in r.compute_events:
        if e.op == "F" and e.stage > 0:
            assert e.start >= arrival[("fwd", e.microbatch, e.stage - 1, e.stage)] - 1e-12


def test_large_schedule_is_fast():
    p, m = 64, 64
    sched = build("1f1b", p, m, split=True)
    link = LinkSpec(bandwidth_GBps=25.0, latency_us=2.0)
    msgs = {("fwd", s, s + 1): 8 << 20 for s in range(p - 1)} | {
        ("bwd", s + 1, s): 8 << 20 for s in range(p - 1)
    }
    c = SimCosts(
        forward_s=[1e-3] * p,
        backward_s=[2e-3] * p,
        weight_grad_fraction=[0.5] * p,
        link=lambda a, b: link,
        message_bytes=msgs,
        activation_bytes=[1 << 28] * p,
    )
    t0 = time.perf_counter()
    r = simulate(sched, c)
    elapsed = time.perf_counter() - t0
    assert len(r.compute_events) == 3 * p * m
    assert elapsed < 3.0, f"simulate took {elapsed:.2f}s"


# ---------------------------------------------------------------------------- timeline


def _traced():
    p, m = 3, 4
    c = costs(
        p,
        link=lambda a, b: LinkSpec(bandwidth_GBps=1.0, latency_us=5.0),
        message_bytes={("fwd", 0, 1): 10**6, ("fwd", 1, 2): 10**6, ("bwd", 2, 1): 10**6},
        activation_bytes=[10**8] * p,
        static_bytes={"d0": 10**9},
    )
    sched = build("1f1b", p, m)
    return sched, simulate(sched, c)


def test_chrome_trace_is_valid():
    sched, r = _traced()
    trace = json.loads(json.dumps(chrome_trace(r, sched, title="t")))
    assert trace["displayTimeUnit"] == "ms"
    events = trace["traceEvents"]
    for e in events:
        assert {"name", "ph", "pid", "tid"} <= e.keys()
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        if e["ph"] == "X":
            assert isinstance(e["ts"], (int, float)) and isinstance(e["dur"], (int, float))
            assert e["ts"] >= 0 and e["dur"] >= 0
    compute = [e for e in events if e["ph"] == "X" and e.get("cat") != "transfer"]
    assert (
        len(compute)
        == len(r.compute_events)
        == sum(a.is_compute for prog in sched.actions.values() for a in prog)
    )
    assert {"F0 s0", "B3 s2"} <= {e["name"] for e in compute}
    assert all({"stage", "microbatch"} <= e["args"].keys() for e in compute)
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert "link d0->d1" in names and "link d2->d1" in names
    moves = [e for e in events if e.get("cat") == "transfer"]
    assert len(moves) == 3 * 4 and all(e["args"]["bytes"] == 10**6 for e in moves)
    # Slices on one thread never partially overlap.
    by_thread: dict = {}
    for e in events:
        if e["ph"] == "X":
            ts, dur = round(e["ts"] * 1000), round(e["dur"] * 1000)  # viewers keep integer ns
            by_thread.setdefault((e["pid"], e["tid"]), []).append((ts, ts + dur))
    for spans in by_thread.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_plot_timeline_writes_png(tmp_path):
    sched, r = _traced()
    out = tmp_path / "timeline.png"
    plot_timeline(r, sched, out, title="1f1b test")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert [p.name for p in tmp_path.iterdir()] == ["timeline.png"]
    split = build("1f1b", 2, 3, split=True)
    r2 = simulate(split, costs(2, weight_grad_fraction=[0.5, 0.5]))
    plot_timeline(r2, split, out, transfers=False)
    assert out.stat().st_size > 5000


# ------------------------------------------------------------ host sends and the step tail


def test_step_tail_runs_after_the_program_and_its_sends():
    # GPipe, p=2, m=3, free links: d0 ends at (m+p-1)(tf+tb) = 12, d1's last B ends at 10.
    base = simulate(build("gpipe", 2, 3), costs(2))
    assert base.iteration_s == pytest.approx(12.0)
    r = simulate(build("gpipe", 2, 3), costs(2, step_tail_s={"d0": 0.5, "d1": 4.0}))
    assert r.iteration_s == pytest.approx(14.0)  # d1: 10 + 4 beats d0: 12 + 0.5
    assert r.per_device["d1"].tail_s == 4.0 and r.per_device["d0"].tail_s == 0.5
    r = simulate(build("gpipe", 2, 3), costs(2, step_tail_s={"d0": 0.5}))
    assert r.iteration_s == pytest.approx(12.5)
    with pytest.raises(ValueError, match="step_tail_s"):
        simulate(build("gpipe", 2, 3), costs(2, step_tail_s={"d0": -1.0}))


def test_host_driven_send_holds_the_sender():
    link = LinkSpec(
        name="gloo",
        bandwidth_GBps=1e6,
        latency_us=0.0,
        send_blocking_us=1e5,
        send_blocking_GBps=1e-6,
    )  # 0.1 s per tensor + 1000 bytes at 1000 B/s = 1.1 s per send
    assert link.send_blocking_seconds(1000) == pytest.approx(1.1)
    assert link.send_blocking_seconds(1000, tensors=2) == pytest.approx(1.2)
    assert link.send_blocking_seconds(0) == 0.0
    nbytes = {("fwd", 0, 1): 1000, ("bwd", 1, 0): 1000}
    r = simulate(build("gpipe", 2, 2), costs(2, link=lambda a, b: link, message_bytes=nbytes))
    ev = {(e.op, e.microbatch, e.stage): e for e in r.compute_events}
    # d0: F0 [0, 1], its send holds d0 until 2.1, then F1; the transfer left at t = 1.
    assert ev[("F", 1, 0)].start == pytest.approx(2.1)
    assert ev[("F", 0, 1)].start == pytest.approx(1.0)
    assert r.per_device["d0"].send_blocking_s == pytest.approx(2 * 1.1)
    assert r.per_device["d1"].send_blocking_s == pytest.approx(2 * 1.1)
    # Busy time is compute only.
    assert r.per_device["d0"].busy_s == pytest.approx(2 * 3.0)
    free = simulate(build("gpipe", 2, 2), costs(2, message_bytes=nbytes))
    assert r.iteration_s > free.iteration_s
