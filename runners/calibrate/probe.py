"""Pipeline probe: run a model as a real pipeline and measure how its stages run there.

An operator timed alone, even corrected for its model's context
(`runners.calibrate.model_ops`), runs faster than the same operator inside a pipeline rank:
there the rank computes while its peer computes, its receives wake it up from idle (cold
caches, a descheduled virtual CPU), and the communication library's threads share its
cores (how much, measured: docs/calibration.md). Only a run shows it, so the probe makes
one:

1. a cluster of `stages` copies of the profile's device joined by its measured link;
2. `planner.api.plan` with the `params` strategy (a split that does not depend on the
   times being calibrated), 1F1B, `microbatches` micro-batches;
3. `exporters.bundle.export`, then `runners.launch.run` for `steps` training steps with
   a trace;
4. per stage, the mean forward (F), backward (B, + W) and SEND action of the trace, the
   first step left out, against the plan's per-stage prediction.

`context_factors` turns that into one factor for forward and one for backward: the
factor by which the operators the calibration owns must be scaled so that the predicted
stage times add up to the measured ones (operators priced otherwise, by an earlier
calibration or the roofline, are left as they are). `fit_pipeline_latency` then fits the
link's latency so that the simulator, fed every probe's measured stage times, reproduces
the probes' measured iterations (`replay_record`, `replay_iteration`); `fit_send_blocking`
fits `send_blocking = tensors * alpha + bytes / beta` to the probes' SEND actions.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
from pathlib import Path

import yaml

from cost.profile import Profile, save_profile
from planner.graph.shapes import ShapeBindings

#: Factors are clamped to this range: outside it the probe measured something else.
FACTOR_RANGE = (0.25, 4.0)


def action_means(trace_path: str | Path, microbatches: int) -> dict[int, dict[str, list]]:
    """Per stage: mean seconds of its F, B, W and SEND actions in a runner trace (`pipeplan
    run --trace`), each stage's first `microbatches` actions of a kind (the first step) left
    out. Means, not medians: an iteration is a sum of actions, and the rare stalls of a
    busy host (a send that waits a scheduler tick) belong in it."""
    events = [
        e
        for e in json.loads(Path(trace_path).read_text())["traceEvents"]
        if e.get("cat") == "measured" and e.get("ph") == "X"
    ]
    durations: dict[int, dict[str, list[float]]] = {}
    for e in sorted(events, key=lambda e: e["ts"]):
        match = re.fullmatch(r"([FBW])\d+ s\d+|(SEND)", e["name"])
        if match:
            per = durations.setdefault(e["args"]["stage"], {})
            per.setdefault(match[1] or match[2], []).append(e["dur"] * 1e-6)
    return {
        s: {op: statistics.mean(v[microbatches:] or v) for op, v in ops.items()}
        for s, ops in sorted(durations.items())
    }


def run_probe(
    profile: Profile,
    model: str,
    bindings: ShapeBindings,
    *,
    stages: int = 2,
    microbatches: int = 8,
    steps: int = 10,
    workdir: str | Path | None = None,
) -> dict:
    """Plan, export and run `model` on `stages` local processes of the profiled device;
    return the plan's per-stage prediction and the measured mean actions (seconds). The
    files (profile, cluster, bundle, trace) go to `workdir`, or to a temporary folder
    removed afterwards."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="pipeplan-probe-") as tmp:
            return run_probe(
                profile,
                model,
                bindings,
                stages=stages,
                microbatches=microbatches,
                steps=steps,
                workdir=tmp,
            )
    from exporters.bundle import export
    from planner.api import plan
    from planner.config import PlanConfig
    from runners.launch import run

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    profile_path = work / "profile.yaml"
    save_profile(profile, profile_path)
    link = {"profile": str(profile_path)} if profile.link is not None else "loopback"
    cluster = {
        "name": "probe",
        "nodes": [
            {
                "name": "n0",
                "devices": [{"profile": str(profile_path), "count": stages}],
                "link": link,
            }
        ],
    }
    cluster_path = work / "cluster.yaml"
    cluster_path.write_text(yaml.safe_dump(cluster, sort_keys=False))
    config = PlanConfig(
        stages=stages, microbatches=microbatches, schedule="1f1b", strategy="params"
    )
    the_plan = plan(model, cluster_path, config, bindings)
    bundle = work / "bundle"
    export(model, the_plan, bundle, force=True)
    trace = work / "trace.json"
    report = run(bundle, steps=steps, trace=str(trace))
    measured = action_means(trace, microbatches)
    return {
        "plan": the_plan,
        "stages": [
            {
                "stage": st.index,
                "nodes": st.nodes,
                "predicted_forward_s": st.forward_ms / 1e3,
                "predicted_backward_s": st.backward_ms / 1e3,
                "measured_forward_s": measured.get(st.index, {}).get("F", 0.0),
                "measured_backward_s": measured.get(st.index, {}).get("B", 0.0)
                + measured.get(st.index, {}).get("W", 0.0),
                "measured_send_s": measured.get(st.index, {}).get("SEND"),
            }
            for st in the_plan.stages
        ],
        "predicted_iteration_s": the_plan.predicted.iteration_ms / 1e3,
        "measured_iteration_s": report.measured.iteration_ms / 1e3,
    }


def context_factors(stages: list[dict], owned: dict[str, tuple[float, float]]) -> dict:
    """Forward and backward factors for the owned operators.

    `stages`: `run_probe`'s per-stage rows; `owned`: node name -> (forward_s, backward_s)
    of the operators whose times the calibration may scale. With O the owned part of the
    prediction and R the rest, the factor f solves  sum(measured) = f * O + R."""
    out = {}
    for kind in ("forward", "backward"):
        measured = sum(st[f"measured_{kind}_s"] for st in stages)
        predicted = sum(st[f"predicted_{kind}_s"] for st in stages)
        own = sum(owned[n][kind == "backward"] for st in stages for n in st["nodes"] if n in owned)
        rest = predicted - own
        factor = 1.0 if own <= 0 or measured <= 0 else (measured - rest) / own
        out[f"{kind}_factor"] = min(max(factor, FACTOR_RANGE[0]), FACTOR_RANGE[1])
        out[f"{kind}_measured_s"] = measured
        out[f"{kind}_predicted_s"] = predicted
    return out


def replay_record(probe: dict) -> dict:
    """What the latency fit needs of a probe, small enough to keep in the profile: the
    schedule, the routes, the measured stage times and iteration, the optimizer steps."""
    plan = probe["plan"]
    return {
        "schedule": plan.schedule.model_dump(mode="json"),
        "stage_device": [s.device for s in plan.stages],
        "routes": [
            [r.tensor, r.src_stage, r.dst_stage, r.bytes, r.dtype.startswith(("float", "bfloat"))]
            for r in plan.routing.forward
        ],
        "forward_s": [st["measured_forward_s"] for st in probe["stages"]],
        "backward_s": [st["measured_backward_s"] for st in probe["stages"]],
        "optimizer_s": [s.optimizer_ms / 1e3 for s in plan.stages],
        "measured_iteration_s": probe["measured_iteration_s"],
        "sends": _send_points(plan, probe["stages"]),
    }


def _send_points(plan, stages: list[dict]) -> list[list[float]]:
    """[bytes, tensors, mean seconds] of each stage's SEND action (a message to one
    neighbour per micro-batch: a first stage sends forward, a last stage backward)."""
    from planner.simulate.costs import messages

    routes = [
        (r.tensor, r.src_stage, r.dst_stage, r.bytes, r.dtype.startswith(("float", "bfloat")))
        for r in plan.routing.forward
    ]
    nbytes, count = messages(routes)
    points = []
    for st in stages:
        s = st["stage"]
        mean = st.get("measured_send_s")
        keys = [k for k in nbytes if k[1] == s]
        if mean is None or len(keys) != 1:  # a middle stage sends both ways: ambiguous
            continue
        points.append([nbytes[keys[0]], count[keys[0]], mean])
    return points


def fit_send_blocking(records: list[dict]) -> tuple[float, float | None, dict] | None:
    """`t = tensors * alpha + bytes / beta` on every probe's SEND means (relative least
    squares, coefficients >= 0); with one message size only, `alpha` alone. Returns
    (alpha seconds, beta bytes/s or None, report) or None without points."""
    import numpy as np

    points = [p for r in records for p in r.get("sends", [])]
    if not points:
        return None
    a = np.array([[k, n] for n, k, _ in points], dtype=float)
    t = np.array([p[2] for p in points])
    alpha, inv_beta = 0.0, 0.0
    if len({p[0] for p in points}) >= 2:
        coef, *_ = np.linalg.lstsq(a / t[:, None], np.ones(len(t)), rcond=None)
        alpha, inv_beta = (max(0.0, float(c)) for c in coef)
    if inv_beta == 0.0:
        alpha = float(np.sum(a[:, 0] / t) / np.sum((a[:, 0] / t) ** 2))
    predicted = a @ np.array([alpha, inv_beta])
    report = {
        "model": "send_blocking = tensors * send_blocking_us + bytes / send_blocking_GBps, "
        "on the mean SEND action of every pipeline probe",
        "points": [[int(n), int(k), round(s * 1e6, 1)] for n, k, s in points],
        "mape_percent": round(float(np.mean(np.abs(predicted - t) / t)) * 100, 2),
    }
    return alpha, (1.0 / inv_beta if inv_beta > 0 else None), report


def replay_iteration(record: dict, link) -> float:
    """Seconds of one iteration of a probe (`replay_record`) in the simulator, with its
    measured stage times and every inter-device transfer over `link` (a `LinkSpec`)."""
    from cost.links import LOCAL_LINK
    from planner.schedule.actions import Schedule
    from planner.simulate.costs import make_costs
    from planner.simulate.engine import simulate

    n = len(record["stage_device"])
    costs = make_costs(
        forward_s=record["forward_s"],
        backward_s=record["backward_s"],
        weight_grad_s=[0.0] * n,
        memory=[(0, 0)] * n,
        stage_device=record["stage_device"],
        routes=[tuple(r) for r in record["routes"]],
        link=lambda a, b: LOCAL_LINK if a == b else link,
        optimizer_s=record["optimizer_s"],
    )
    return simulate(Schedule.model_validate(record["schedule"]), costs).iteration_s


def fit_pipeline_latency(records: list[dict], link) -> tuple[float, dict]:
    """The link latency (seconds) under which the simulator, fed each probe's measured stage
    times, best reproduces the probes' measured iterations (mean relative error, searched
    on a log grid from the ping-pong's latency to 20 ms, then refined).

    On a host whose cores all compute, a message waits for its communication thread to get
    a core: the ping-pong, run between otherwise idle processes, does not see that; the
    probes do. `link`: the ping-pong's fit (its latency is the lower end of the search)."""
    import math

    from cost.links import LinkSpec

    fields = (
        "bandwidth_GBps",
        "latency_us",
        "efficiency",
        "send_blocking_us",
        "send_blocking_GBps",
    )
    base = LinkSpec(name="probe", **{f: getattr(link, f) for f in fields})

    def error(latency_s: float) -> float:
        spec = base.model_copy(update={"latency_us": latency_s * 1e6})
        errs = [
            abs(replay_iteration(r, spec) - r["measured_iteration_s"]) / r["measured_iteration_s"]
            for r in records
        ]
        return sum(errs) / len(errs)

    low = max(link.latency_us * 1e-6, 1e-6)
    grid = [low * math.exp(i * math.log(20e-3 / low) / 48) for i in range(49)]
    best_err, best = min((error(x), x) for x in grid)
    i = grid.index(best)
    lo, hi = grid[max(0, i - 1)], grid[min(len(grid) - 1, i + 1)]
    for _ in range(24):  # golden-section refinement between the neighbours
        a = hi - (hi - lo) / 1.618
        b = lo + (hi - lo) / 1.618
        if error(a) < error(b):
            hi = b
        else:
            lo = a
    refined = (lo + hi) / 2
    if error(refined) < best_err:
        best, best_err = refined, error(refined)
    return best, {
        "model": "latency_us chosen so that the simulated iteration of each pipeline probe, "
        "with its measured stage times, matches the measured iteration (mean relative error)",
        "ping_pong_latency_us": round(link.latency_us, 2),
        "latency_us": round(best * 1e6, 2),
        "mean_error_percent": round(100 * best_err, 2),
        "mean_error_percent_at_ping_pong_latency": round(100 * error(low), 2),
        "probes": len(records),
    }
