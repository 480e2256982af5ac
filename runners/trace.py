"""One Chrome trace for a run: every rank's measured actions, beside the simulator's."""

from __future__ import annotations

import json
from pathlib import Path

from exporters.manifest import Manifest

SIMULATED_PID_OFFSET = 1000


def merged_trace(root: Path, manifest: Manifest, results: list[dict]) -> dict:
    """Measured tracks (one process per rank) and, when the bundle has its plan, simulated ones."""
    events: list[dict] = []
    for r in results:
        pid = r["rank"]
        events.append(
            {
                "ph": "M",
                "name": "process_name",
                "pid": pid,
                "tid": 0,
                "args": {"name": f"measured rank {pid} ({r['device']})"},
            }
        )
        for op, stage, mb, start, end in r["events"]:
            name = f"{op}{mb} s{stage}" if op in ("F", "B", "W") else op
            events.append(
                {
                    "ph": "X",
                    "name": name,
                    "cat": "measured",
                    "pid": pid,
                    "tid": 0,
                    "ts": round(start * 1e6, 3),
                    "dur": round(max(end - start, 0.0) * 1e6, 3),
                    "args": {"stage": stage, "microbatch": mb},
                }
            )
    plan_file = root / "plan.json"
    if plan_file.exists():
        from planner.plan_file import load_plan
        from planner.simulate.replay import replay
        from planner.simulate.timeline import chrome_trace

        plan = load_plan(plan_file)
        simulated = chrome_trace(replay(plan), plan.schedule, title="simulated")
        for e in simulated["traceEvents"]:
            e = dict(e)
            if isinstance(e.get("pid"), int):
                e["pid"] += SIMULATED_PID_OFFSET
            if e.get("ph") == "M" and e.get("name") == "process_name":
                e["args"] = {"name": f"simulated {e['args'].get('name', '')}"}
            events.append(e)
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"bundle": str(root)}}


def write(path: str, trace: dict) -> None:
    Path(path).write_text(json.dumps(trace))
