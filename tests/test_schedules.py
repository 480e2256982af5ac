"""Pipeline schedules: generated programs are complete, respect dependencies and cannot
deadlock; memory and bubble match the papers; the checker rejects broken programs."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.schedule import gpipe, interleaved, one_f_one_b, zero_bubble
from planner.schedule.actions import Action, Schedule
from planner.schedule.build import build_schedule, schedule_from_orders
from planner.schedule.check import ScheduleError, check_schedule, peak_in_flight

KINDS = ["gpipe", "1f1b", "interleaved", "zb"]
MODULES = {"gpipe": gpipe, "1f1b": one_f_one_b, "zb": zero_bubble}


def make(kind: str, p: int, m: int, v: int = 1, routes=None) -> Schedule:
    stages = p * v
    if routes is None:
        routes = [(("h", "mask"), ("h",))] * (stages - 1)
    return build_schedule(
        kind,
        stage_device=[f"gpu{s % p}" for s in range(stages)],
        microbatches=m,
        virtual_stages=v,
        routes=routes,
    )


def compact(orders) -> dict[int, str]:
    return {d: " ".join(f"{op}{mb}" for op, mb, _ in o) for d, o in orders.items()}


def makespan(schedule: Schedule, cost: dict[str, int]) -> int:
    """Unit-time run of the compute actions (communication free), in program order."""
    S = schedule.stages
    programs = [[a for a in p if a.is_compute] for p in schedule.actions.values()]
    finish: dict[tuple[str, int, int], int] = {}
    free = [0] * len(programs)
    heads = [0] * len(programs)
    while any(h < len(p) for h, p in zip(heads, programs, strict=True)):
        moved = False
        for d, program in enumerate(programs):
            while heads[d] < len(program):
                a = program[heads[d]]
                mb, s = a.microbatch, a.stage
                deps = {
                    "F": [("F", mb, s - 1)] if s else [],
                    "B": [("F", mb, s)] + ([("B", mb, s + 1)] if s < S - 1 else []),
                    "W": [("B", mb, s)],
                }[a.op]
                if any(x not in finish for x in deps):
                    break
                finish[a.op, mb, s] = free[d] = (
                    max([free[d]] + [finish[x] for x in deps]) + cost[a.op]
                )
                heads[d] += 1
                moved = True
        assert moved
    return max(free)


# --- every generated schedule is valid -------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("p", range(1, 7))
def test_generated_schedules_pass_the_checker(kind: str, p: int) -> None:
    for m in range(1, 13):
        for v in [1, 2, 3] if kind == "interleaved" else [1]:
            schedule = make(kind, p, m, v)
            check_schedule(schedule, "rendezvous")
            check_schedule(schedule, "eager")
            assert_counts(schedule)


def assert_counts(schedule: Schedule) -> None:
    m = schedule.microbatches
    per_stage: Counter[tuple[str, int]] = Counter()
    for device, program in schedule.actions.items():
        for a in program:
            assert schedule.stage_device[a.stage] == device
            if a.is_compute:
                per_stage[a.op, a.stage] += 1
    for s in range(schedule.stages):
        assert per_stage["F", s] == m
        assert per_stage["B", s] == m
        assert per_stage["W", s] == (m if schedule.split_backward else 0)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    p=st.integers(1, 10),
    m=st.integers(1, 24),
    v=st.integers(1, 4),
)
def test_random_sizes(kind: str, p: int, m: int, v: int) -> None:
    v = v if kind == "interleaved" else 1
    schedule = make(kind, p, m, v)
    check_schedule(schedule, "rendezvous")
    check_schedule(schedule, "eager")
    assert_counts(schedule)
    peaks = peak_in_flight(schedule)
    if kind == "1f1b":
        assert peaks == {i: min(p - i, m) for i in range(p)}
    elif kind == "zb":
        assert max(peaks.values()) <= max(peak_in_flight(make("1f1b", p, m)).values())
    elif kind == "gpipe":
        assert set(peaks.values()) == {m}


# --- memory and bubbles ----------------------------------------------------------------


@pytest.mark.parametrize("p", range(1, 7))
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 12])
def test_peak_in_flight(p: int, m: int) -> None:
    assert peak_in_flight(make("gpipe", p, m)) == dict.fromkeys(range(p), m)
    one_f_one_b = peak_in_flight(make("1f1b", p, m))
    assert one_f_one_b == {i: min(p - i, m) for i in range(p)}
    zb = peak_in_flight(make("zb", p, m))
    # ZB-H1 keeps min(p, m) micro-batches on every stage: 1F1B's first stage, its peak
    assert zb == dict.fromkeys(range(p), min(p, m))
    assert max(zb.values()) <= max(one_f_one_b.values())


@pytest.mark.parametrize(("p", "m"), [(2, 4), (4, 4), (4, 8), (5, 7), (6, 12)])
def test_zero_bubble_h1_bubble_is_a_third_of_1f1b(p: int, m: int) -> None:
    one_f_one_b = makespan(make("1f1b", p, m), {"F": 1, "B": 2})  # B includes W
    zb = makespan(make("zb", p, m), {"F": 1, "B": 1, "W": 1})
    gp = makespan(make("gpipe", p, m), {"F": 1, "B": 2})
    assert one_f_one_b == gp == 3 * (m + p - 1)
    assert zb == 3 * m + (p - 1)  # bubble p - 1 = 3(p - 1) / 3


@pytest.mark.parametrize(("p", "m", "v"), [(2, 4, 2), (4, 8, 2), (4, 8, 4), (3, 9, 3)])
def test_interleaved_bubble_shrinks_by_v(p: int, m: int, v: int) -> None:
    # per-chunk costs F = 1, B = 2: 1F1B on whole stages has bubble 3 v (p - 1)
    assert makespan(make("interleaved", p, m, v), {"F": 1, "B": 2}) == 3 * m * v + 3 * (p - 1)


# --- the orders themselves -------------------------------------------------------------


def test_gpipe_and_1f1b_orders() -> None:
    assert compact(gpipe.compute_order(2, 3)) == {0: "F0 F1 F2 B0 B1 B2", 1: "F0 F1 F2 B0 B1 B2"}
    assert compact(one_f_one_b.compute_order(3, 4)) == {
        0: "F0 F1 F2 B0 F3 B1 B2 B3",
        1: "F0 F1 B0 F2 B1 F3 B2 B3",
        2: "F0 B0 F1 B1 F2 B2 F3 B3",
    }
    assert compact(one_f_one_b.compute_order(4, 2))[0] == "F0 F1 B0 B1"


def test_zero_bubble_h1_order_matches_the_paper_figure() -> None:
    # Qi et al. 2024, Figure 3 (top), p = 4: stage i postpones its first i weight passes
    assert compact(zero_bubble.compute_order(4, 8)) == {
        0: "F0 F1 F2 F3 B0 W0 F4 B1 W1 F5 B2 W2 F6 B3 W3 F7 B4 W4 B5 W5 B6 W6 B7 W7",
        1: "F0 F1 F2 B0 F3 B1 W0 F4 B2 W1 F5 B3 W2 F6 B4 W3 F7 B5 W4 B6 W5 B7 W6 W7",
        2: "F0 F1 B0 F2 B1 F3 B2 W0 F4 B3 W1 F5 B4 W2 F6 B5 W3 F7 B6 W4 B7 W5 W6 W7",
        3: "F0 B0 F1 B1 F2 B2 F3 B3 W0 F4 B4 W1 F5 B5 W2 F6 B6 W3 F7 B7 W4 W5 W6 W7",
    }


def test_interleaved_order_follows_megatron() -> None:
    orders = interleaved.compute_order(2, 4, 2)
    # device 0 holds stages 0 and 2; warm-up (2 - 0 - 1) * 2 + (2 - 1) * 2 = 4 forwards
    assert " ".join(f"{op}{mb}@{s}" for op, mb, s in orders[0]) == (
        "F0@0 F1@0 F0@2 F1@2 F2@0 B0@2 F3@0 B1@2 F2@2 B0@0 F3@2 B1@0 B2@2 B3@2 B2@0 B3@0"
    )
    # device 1 (stages 1, 3): warm-up 2
    assert [f"{op}{mb}@{s}" for op, mb, s in orders[1]][:4] == ["F0@1", "F1@1", "F0@3", "B0@3"]


def test_interleaved_group_sizes() -> None:
    assert interleaved.default_group_size(4, 8) == 4
    assert interleaved.default_group_size(4, 10) == 5
    assert interleaved.default_group_size(2, 7) == 4  # groups of 4 and 3 (3 >= p)
    assert interleaved.default_group_size(4, 6) == 6
    assert interleaved.default_group_size(4, 3) == 3  # m < p: one group
    assert interleaved.schedule_table(5, 2, 3) == [
        (0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (3, 0), (4, 0), (3, 1), (4, 1)
    ]  # fmt: skip
    with pytest.raises(ValueError, match="last micro-batch group would hold 1"):
        interleaved.compute_order(2, 5, 2, group_size=2)
    with pytest.raises(ValueError, match="group size must lie in"):
        interleaved.compute_order(4, 8, 2, group_size=9)


@pytest.mark.parametrize("module", [gpipe, one_f_one_b, zero_bubble, interleaved])
def test_compute_order_rejects_empty_pipelines(module) -> None:
    with pytest.raises(ValueError, match="at least 1 micro-batch"):
        module.compute_order(2, 0)
    with pytest.raises(ValueError, match="at least 1 stage"):
        module.compute_order(0, 2)


# --- the builder -----------------------------------------------------------------------


def test_messages_carry_the_routed_tensors() -> None:
    schedule = make("1f1b", 3, 2, routes=[(("h", "ids"), ("h",)), (("y",), ())])
    messages = [a for p in schedule.actions.values() for a in p if not a.is_compute]
    by_key: dict[tuple, list[Action]] = {}
    for a in messages:
        by_key.setdefault(a.message_key(), []).append(a)
    assert by_key[("fwd", 1, 0, 1)][0].tensors == ("h", "ids")
    assert by_key[("bwd", 0, 1, 0)][0].tensors == ("h",)
    # no gradient crosses boundary 1: the message still carries the control dependency
    empty = by_key[("bwd", 1, 2, 1)]
    assert {a.op for a in empty} == {"SEND", "RECV"} and empty[0].tensors == ()
    assert len(messages) == 2 * 2 * 2 * 2  # 2 boundaries x 2 directions x 2 mbs x SEND/RECV
    send = next(a for a in schedule.actions["gpu0"] if a.op == "SEND")
    assert (send.stage, send.peer_stage, send.direction, send.microbatch) == (0, 1, "fwd", 0)


def test_sends_follow_their_producers() -> None:
    programs = make("gpipe", 2, 3).actions
    assert [a.label() for a in programs["gpu0"][:4]] == [
        "F0@0",
        "SEND fwd mb0 0->1",
        "F1@0",
        "SEND fwd mb1 0->1",
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_single_device_has_no_messages(kind: str) -> None:
    v = 3 if kind == "interleaved" else 1
    schedule = make(kind, 1, 4, v)
    assert all(a.is_compute for a in schedule.actions["gpu0"])
    check_schedule(schedule)


def test_interleaved_messages_only_between_devices() -> None:
    schedule = make("interleaved", 2, 4, 2)
    for device, program in schedule.actions.items():
        for a in program:
            if not a.is_compute:
                assert schedule.stage_device[a.peer_stage] != device


def test_builder_validates_its_input() -> None:
    routes = [((), ())]
    with pytest.raises(ValueError, match="unknown schedule kind"):
        build_schedule("pipedream", stage_device=["a", "b"], microbatches=2, routes=routes)
    with pytest.raises(ValueError, match="1 boundaries"):
        build_schedule("1f1b", stage_device=["a", "b"], microbatches=2, routes=[])
    with pytest.raises(ValueError, match="distinct devices"):
        build_schedule("1f1b", stage_device=["a", "a"], microbatches=2, routes=routes)
    with pytest.raises(ValueError, match="virtual_stages must be 1"):
        build_schedule(
            "zb", stage_device=["a", "b"], microbatches=2, virtual_stages=2, routes=routes
        )
    with pytest.raises(ValueError, match="must share the device of stage 0"):
        build_schedule(
            "interleaved",
            stage_device=["a", "b", "b", "a"],
            microbatches=2,
            virtual_stages=2,
            routes=routes * 3,
        )
    with pytest.raises(ValueError, match="not a multiple of virtual_stages"):
        build_schedule(
            "interleaved",
            stage_device=["a", "b", "a"],
            microbatches=2,
            virtual_stages=2,
            routes=routes * 2,
        )
    with pytest.raises(ValueError, match="not sent forward"):
        build_schedule("1f1b", stage_device=["a", "b"], microbatches=2, routes=[(("x",), ("y",))])


def test_builder_rejects_inconsistent_orders() -> None:
    # stage 0 waits for gradient 0 before its second forward, stage 1 for the second
    # forward before its first backward: a cycle
    orders = {
        0: [("F", 0, 0), ("B", 0, 0), ("F", 1, 0), ("B", 1, 0)],
        1: [("F", 0, 1), ("F", 1, 1), ("B", 0, 1), ("B", 1, 1)],
    }
    with pytest.raises(ValueError, match="no device can progress"):
        schedule_from_orders(
            "1f1b", orders, stage_device=["a", "b"], microbatches=2, routes=[((), ())]
        )
    orders[1] = orders[1][:-1]
    with pytest.raises(ValueError, match="missing B1@1"):
        schedule_from_orders(
            "1f1b", orders, stage_device=["a", "b"], microbatches=2, routes=[((), ())]
        )


# --- the checker rejects broken schedules ----------------------------------------------


def edited(schedule: Schedule, device: str, program: list[Action]) -> Schedule:
    return schedule.model_copy(update={"actions": {**schedule.actions, device: program}})


def F(mb: int, s: int) -> Action:
    return Action(op="F", microbatch=mb, stage=s)


def B(mb: int, s: int) -> Action:
    return Action(op="B", microbatch=mb, stage=s)


def msg(op: str, direction: str, mb: int, stage: int, peer: int) -> Action:
    return Action(op=op, microbatch=mb, stage=stage, peer_stage=peer, direction=direction)


def two_stage(a: list[Action], b: list[Action], m: int = 2) -> Schedule:
    return Schedule(
        kind="1f1b", microbatches=m, stages=2, stage_device=["a", "b"], actions={"a": a, "b": b}
    )


def test_missing_recv_is_rejected() -> None:
    schedule = make("1f1b", 3, 4)
    program = list(schedule.actions["gpu1"])
    i = next(i for i, a in enumerate(program) if a.op == "RECV")
    with pytest.raises(ScheduleError, match=r"message fwd mb0 0->1 has 1 SEND and 0 RECV"):
        check_schedule(edited(schedule, "gpu1", program[:i] + program[i + 1 :]))


def test_send_without_recv_is_rejected() -> None:
    schedule = make("gpipe", 2, 2)
    extra = msg("SEND", "fwd", 1, 0, 1)
    with pytest.raises(ScheduleError, match="has 2 SEND and 1 RECV"):
        check_schedule(edited(schedule, "gpu0", [*schedule.actions["gpu0"], extra]))


def test_mutual_sends_deadlock_under_rendezvous_only() -> None:
    # stage 0 sends both forwards before receiving; stage 1 sends its first gradient
    # before receiving the second forward: both block in SEND under rendezvous.
    a = [F(0, 0), msg("SEND", "fwd", 0, 0, 1), F(1, 0), msg("SEND", "fwd", 1, 0, 1),
         msg("RECV", "bwd", 0, 0, 1), B(0, 0), msg("RECV", "bwd", 1, 0, 1), B(1, 0)]  # fmt: skip
    b = [msg("RECV", "fwd", 0, 1, 0), F(0, 1), B(0, 1), msg("SEND", "bwd", 0, 1, 0),
         msg("RECV", "fwd", 1, 1, 0), F(1, 1), B(1, 1), msg("SEND", "bwd", 1, 1, 0)]  # fmt: skip
    schedule = two_stage(a, b)
    check_schedule(schedule, "eager")
    with pytest.raises(ScheduleError, match="deadlock under rendezvous") as info:
        check_schedule(schedule, "rendezvous")
    assert "a at SEND fwd mb1 0->1" in str(info.value)
    assert "b at SEND bwd mb0 1->0" in str(info.value)


def test_mutual_recvs_deadlock_under_both_semantics() -> None:
    a = [msg("RECV", "bwd", 0, 0, 1), F(0, 0), msg("SEND", "fwd", 0, 0, 1), B(0, 0)]
    b = [msg("RECV", "fwd", 0, 1, 0), F(0, 1), B(0, 1), msg("SEND", "bwd", 0, 1, 0)]
    for semantics in ("rendezvous", "eager"):
        with pytest.raises(ScheduleError, match=f"deadlock under {semantics}"):
            check_schedule(two_stage(a, b, m=1), semantics)


def test_swapped_generated_order_deadlocks() -> None:
    # gpu0 of 1F1B receives gradient 0 before sending activation 1; swapping the two makes
    # gpu0 and gpu1 both SEND to each other first
    schedule = make("1f1b", 2, 3)
    program = list(schedule.actions["gpu0"])
    labels = [a.label() for a in program]
    recv, send = labels.index("RECV bwd mb0 0<-1"), labels.index("SEND fwd mb1 0->1")
    assert recv < send
    swapped = program[:recv] + [program[send]] + program[recv:send] + program[send + 1 :]
    check_schedule(edited(schedule, "gpu0", swapped), "eager")
    with pytest.raises(ScheduleError, match="deadlock under rendezvous"):
        check_schedule(edited(schedule, "gpu0", swapped), "rendezvous")


def test_missing_forward_is_rejected() -> None:
    schedule = make("zb", 2, 3)
    program = [a for a in schedule.actions["gpu0"] if a.label() != "F2@0"]
    with pytest.raises(ScheduleError, match="F2@0 appears 0 times"):
        check_schedule(edited(schedule, "gpu0", program))


def test_backward_before_forward_is_rejected() -> None:
    schedule = make("gpipe", 1, 2)
    program = [B(0, 0), F(0, 0), F(1, 0), B(1, 0)]
    with pytest.raises(ScheduleError, match="B0@0 on gpu0 is not preceded by F0@0"):
        check_schedule(edited(schedule, "gpu0", program))


def test_compute_before_its_recv_is_rejected() -> None:
    schedule = make("1f1b", 2, 1)
    program = list(schedule.actions["gpu1"])
    assert program[0].op == "RECV"
    swapped = [program[1], program[0], *program[2:]]
    with pytest.raises(ScheduleError, match=r"F0@1 on gpu1 is not preceded by RECV fwd mb0 0->1"):
        check_schedule(edited(schedule, "gpu1", swapped))


def test_send_before_its_producer_is_rejected() -> None:
    a = [msg("SEND", "fwd", 0, 0, 1), F(0, 0), msg("RECV", "bwd", 0, 0, 1), B(0, 0)]
    b = [msg("RECV", "fwd", 0, 1, 0), F(0, 1), B(0, 1), msg("SEND", "bwd", 0, 1, 0)]
    with pytest.raises(ScheduleError, match="SEND fwd mb0 0->1 on a is not preceded by F0@0"):
        check_schedule(two_stage(a, b, m=1))


def test_misplaced_and_malformed_actions_are_rejected() -> None:
    schedule = make("1f1b", 2, 2)
    a, b = schedule.actions["gpu0"], schedule.actions["gpu1"]
    moved = schedule.model_copy(update={"actions": {"gpu0": [*a, F(0, 1)], "gpu1": b}})
    with pytest.raises(ScheduleError, match="F0@1 is on gpu0 but stage 1 is on gpu1"):
        check_schedule(moved)
    with pytest.raises(ScheduleError, match="W without a split backward"):
        check_schedule(edited(schedule, "gpu0", [*a, Action(op="W", microbatch=0, stage=0)]))
    zb = make("zb", 2, 2)
    no_w = [x for x in zb.actions["gpu1"] if x.label() != "W1@1"]
    with pytest.raises(ScheduleError, match="W1@1 appears 0 times"):
        check_schedule(edited(zb, "gpu1", no_w))
    backwards_fwd = msg("SEND", "fwd", 0, 1, 0)
    with pytest.raises(ScheduleError, match="cannot go from stage 1 to stage 0"):
        check_schedule(edited(schedule, "gpu1", [*b, backwards_fwd]))
    with pytest.raises(ValueError, match="semantics must be"):
        check_schedule(schedule, "buffered")


def test_peak_in_flight_counts_program_order() -> None:
    schedule = make("gpipe", 1, 3)
    assert peak_in_flight(schedule) == {0: 3}
    one_at_a_time = [F(0, 0), B(0, 0), F(1, 0), B(1, 0), F(2, 0), B(2, 0)]
    assert peak_in_flight(edited(schedule, "gpu0", one_at_a_time)) == {0: 1}
