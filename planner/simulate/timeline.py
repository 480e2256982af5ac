"""Pictures of a simulated iteration: a Chrome trace and a Gantt chart PNG.

`chrome_trace(result, schedule)` returns a dict in the Trace Event Format (Google,
"Trace Event Format", the JSON Object Format with `traceEvents`) that opens in Perfetto
(ui.perfetto.dev) and chrome://tracing: one process per device with a "compute" thread
holding its F/B/W as complete ("X") events, one thread per directed link in the sending
device's process ("link a->b"; transfers that overlap on a link go to extra lanes
"link a->b #2", ... so that slices on one thread never partially overlap), a memory
counter ("C") per device, and metadata ("M") events naming processes and threads.
Times are microseconds (`ts`, `dur`), pids and tids are ints.

`plot_timeline(result, schedule, path)` draws a Gantt chart (one row per device, F, B
and W in three colours, micro-batch numbers in the boxes when they fit, transfers as thin
bars under the row of the sending device) above the memory each device holds over time,
and writes the PNG atomically. It uses matplotlib's object API (no pyplot, no display,
no global backend change).
"""

from __future__ import annotations

import os

from cost.files import save_figure_atomic
from planner.schedule.actions import Schedule
from planner.simulate.engine import SimResult

#: Colours of the compute ops (matplotlib tab10: blue, orange, green).
OP_COLOURS = {"F": "#1f77b4", "B": "#ff7f0e", "W": "#2ca02c"}
_OP_NAMES = {"F": "forward", "B": "backward", "W": "weight grad"}
_MOVE_COLOURS = {"fwd": "#7f7f7f", "bwd": "#bcbd22"}
_TRACE_COLOURS = {"F": "thread_state_running", "B": "rail_response", "W": "good"}


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _us(seconds: float) -> float:
    """Microseconds on a whole-nanosecond grid (trace viewers store integer ns)."""
    return _ns(seconds) / 1000


def _dur_us(start: float, end: float) -> float:
    """Duration on the same grid, so that ts + dur of one slice equals the next ts exactly."""
    return (_ns(end) - _ns(start)) / 1000


def _lanes(intervals: list[tuple[float, float, int]]) -> dict[int, int]:
    """Greedy lane assignment so that intervals in one lane never overlap."""
    lane_end: list[float] = []
    lane_of: dict[int, int] = {}
    for start, end, idx in sorted(intervals):
        for lane, last in enumerate(lane_end):
            if last <= start:
                lane_end[lane] = end
                lane_of[idx] = lane
                break
        else:
            lane_of[idx] = len(lane_end)
            lane_end.append(end)
    return lane_of


def _devices(result: SimResult, schedule: Schedule) -> list[str]:
    devices = schedule.devices()
    return devices + [d for d in result.per_device if d not in devices]


def chrome_trace(result: SimResult, schedule: Schedule, *, title: str = "") -> dict:
    """The iteration as a Trace Event Format dict (dump it with `json.dumps`)."""
    devices = _devices(result, schedule)
    pid = {d: i + 1 for i, d in enumerate(devices)}
    events: list[dict] = []

    def meta(name: str, p: int, tid: int, value: dict) -> None:
        events.append({"name": name, "ph": "M", "pid": p, "tid": tid, "args": value})

    for i, d in enumerate(devices):
        stages = [s for s, dev in enumerate(schedule.stage_device) if dev == d]
        label = f"{d} (stage{'s' if len(stages) != 1 else ''} {', '.join(map(str, stages))})"
        meta("process_name", pid[d], 0, {"name": label if stages else d})
        meta("process_sort_index", pid[d], 0, {"sort_index": i})
        meta("thread_name", pid[d], 0, {"name": "compute"})
        meta("thread_sort_index", pid[d], 0, {"sort_index": 0})

    for e in result.compute_events:
        events.append(
            {
                "name": f"{e.op}{e.microbatch} s{e.stage}",
                "cat": _OP_NAMES[e.op],
                "ph": "X",
                "ts": _us(e.start),
                "dur": _dur_us(e.start, e.end),
                "pid": pid[e.device],
                "tid": 0,
                "cname": _TRACE_COLOURS[e.op],
                "args": {"op": e.op, "microbatch": e.microbatch, "stage": e.stage},
            }
        )

    # Links: one thread per (directed link, lane) in the sending device's process.
    by_link: dict[tuple[str, str], list[int]] = {}
    for idx, t in enumerate(result.transfer_events):
        if t.src_device != t.dst_device and t.bytes > 0:
            by_link.setdefault((t.src_device, t.dst_device), []).append(idx)
    next_tid = dict.fromkeys(devices, 1)
    for (src, dst), members in sorted(by_link.items(), key=lambda kv: (pid[kv[0][0]], kv[0])):
        lanes = _lanes(
            [(result.transfer_events[i].start, result.transfer_events[i].end, i) for i in members]
        )
        tids = []
        for lane in range(max(lanes.values()) + 1):
            tid = next_tid[src]
            next_tid[src] += 1
            tids.append(tid)
            suffix = f" #{lane + 1}" if lane else ""
            meta("thread_name", pid[src], tid, {"name": f"link {src}->{dst}{suffix}"})
            meta("thread_sort_index", pid[src], tid, {"sort_index": tid})
        for i in members:
            t = result.transfer_events[i]
            events.append(
                {
                    "name": f"{t.direction} mb{t.microbatch} s{t.src_stage}->s{t.dst_stage}",
                    "cat": "transfer",
                    "ph": "X",
                    "ts": _us(t.start),
                    "dur": _dur_us(t.start, t.end),
                    "pid": pid[src],
                    "tid": tids[lanes[i]],
                    "args": {
                        "direction": t.direction,
                        "microbatch": t.microbatch,
                        "src_stage": t.src_stage,
                        "dst_stage": t.dst_stage,
                        "bytes": t.bytes,
                        "to": t.dst_device,
                    },
                }
            )

    for d in devices:
        for time, nbytes in result.memory.get(d, []):
            events.append(
                {
                    "name": "memory",
                    "ph": "C",
                    "ts": _us(time),
                    "pid": pid[d],
                    "tid": 0,
                    "args": {"GB": round(nbytes / 1e9, 6)},
                }
            )

    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "title": title or f"{schedule.kind} schedule",
            "kind": schedule.kind,
            "microbatches": schedule.microbatches,
            "stages": schedule.stages,
            "iteration_ms": result.iteration_s * 1e3,
            "bubble_fraction": result.bubble_fraction,
        },
    }


def plot_timeline(
    result: SimResult,
    schedule: Schedule,
    path: str | os.PathLike[str],
    *,
    title: str = "",
    transfers: bool = True,
    dpi: int = 120,
) -> None:
    """Gantt chart of compute (and transfers) above memory per device; PNG, atomically."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    devices = _devices(result, schedule)
    row = {d: i for i, d in enumerate(devices)}
    n = len(devices)
    width_in = 14.0
    gantt_h = max(2.0, 0.32 * n + 1.0)
    fig = Figure(figsize=(width_in, gantt_h + 3.0), dpi=dpi, layout="constrained")
    gantt, mem = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [gantt_h, 3.0]})
    span_ms = max(result.iteration_s * 1e3, 1e-9)
    # Roughly how many pixels one millisecond takes, to decide whether a label fits.
    px_per_ms = width_in * dpi * 0.85 / span_ms
    fontsize = 7 if n <= 16 else 5

    bar_h = 0.62 if transfers else 0.8
    spans: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for e in result.compute_events:
        spans.setdefault((e.op, row[e.device]), []).append((e.start * 1e3, (e.end - e.start) * 1e3))
    for (op, y), xs in spans.items():
        gantt.broken_barh(
            xs,
            (y - bar_h / 2, bar_h),
            facecolors=OP_COLOURS[op],
            edgecolors="white",
            linewidth=0.4,
        )
    for e in result.compute_events:
        w = (e.end - e.start) * 1e3
        label = str(e.microbatch)
        if w * px_per_ms >= 6 * len(label) + 4 and n <= 48:
            gantt.text(
                (e.start * 1e3) + w / 2,
                row[e.device],
                label,
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white",
            )
    if transfers:
        moves: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for t in result.transfer_events:
            if t.src_device != t.dst_device and t.end > t.start:
                moves.setdefault((t.direction, row[t.src_device]), []).append(
                    (t.start * 1e3, (t.end - t.start) * 1e3)
                )
        for (direction, y), xs in moves.items():
            gantt.broken_barh(
                xs,
                (y + bar_h / 2 + 0.04, 0.12),
                facecolors=_MOVE_COLOURS[direction],
                alpha=0.7,
            )
    gantt.set_yticks(range(n), devices, fontsize=8 if n <= 32 else 5)
    gantt.set_ylim(n - 0.5, -0.5)
    gantt.set_ylabel("device")
    handles = [Patch(color=OP_COLOURS[op], label=_OP_NAMES[op]) for op in ("F", "B", "W")]
    if transfers and result.transfer_events:
        handles += [
            Patch(color=_MOVE_COLOURS["fwd"], alpha=0.7, label="send activations"),
            Patch(color=_MOVE_COLOURS["bwd"], alpha=0.7, label="send gradients"),
        ]
    gantt.legend(
        handles=handles,
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=7,
        ncols=len(handles),
        frameon=False,
    )
    heading = (
        title or f"{schedule.kind}: {schedule.stages} stages, {schedule.microbatches} micro-batches"
    )
    gantt.set_title(
        f"{heading}\niteration {result.iteration_s * 1e3:.4g} ms, "
        f"bubble {100 * result.bubble_fraction:.1f}%",
        fontsize=10,
        loc="left",
    )
    gantt.grid(axis="x", alpha=0.3)

    end_ms = result.iteration_s * 1e3
    for d in devices:
        steps = result.memory.get(d) or [(0.0, 0)]
        xs = [t * 1e3 for t, _ in steps] + [end_ms]
        ys = [b / 1e9 for _, b in steps]
        ys.append(ys[-1])
        mem.step(xs, ys, where="post", label=d, linewidth=1.0)
    mem.set_xlabel("time (ms)")
    mem.set_ylabel("memory (GB)")
    mem.set_xlim(0, max(end_ms, 1e-9))
    mem.grid(alpha=0.3)
    if n <= 16:
        mem.legend(loc="upper right", fontsize=7, ncols=min(n, 8))

    save_figure_atomic(fig, path, dpi=dpi)
