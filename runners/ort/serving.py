"""What a streamed onnxruntime run measured, next to what its plan predicts.

Latency of request r: its first stage's start (on the entry rank) to its last stage's
end (on the exit rank), both on rank 0's clock (`runners.ort.worker.clock_offset`);
percentiles by linear interpolation (numpy's default). Throughput: samples completed
over the measured requests divided by the time between the last warm-up request's end
and the last request's end (a completion rate, so the warm-up and the pipeline fill do
not count).

The plan's predictions for one request (one micro-batch) flowing alone: its latency is
the stages' forward times (with the time their sends hold them) plus the forward
transfers, summed along the pipeline (the latency objective's `fill`,
`planner.partition.objective`); in a stream, each device serves one request at a time,
so throughput is micro-batch size x replicas over the busiest device's forward time per
request, or the slowest link's transfer, whichever is larger.
"""

from __future__ import annotations

import numpy as np

from exporters.manifest import Manifest
from runners.report import Latency, Serving, StageTiming


def predicted_serving(plan) -> tuple[float, float]:
    """(latency ms, throughput samples/s) the plan predicts for a stream of requests."""
    busy: dict[str, float] = {}
    latency = 0.0
    links = [0.0]
    for st in plan.stages:
        forward = st.forward_ms + st.send_blocking_ms
        busy[st.device] = busy.get(st.device, 0.0) + forward
        latency += forward + st.send_ms
        links.append(st.send_ms)
    bottleneck = max(max(busy.values(), default=0.0), max(links))
    samples = plan.layout.data_parallel * plan.model.microbatch_size
    return latency, (1e3 * samples / bottleneck if bottleneck > 0 else 0.0)


def latency_stats(values_ms: list[float]) -> Latency:
    a = np.asarray(values_ms, dtype=float)
    q50, q90, q99 = np.percentile(a, [50, 90, 99])
    return Latency(
        p50_ms=float(q50),
        p90_ms=float(q90),
        p99_ms=float(q99),
        mean_ms=float(a.mean()),
        min_ms=float(a.min()),
        max_ms=float(a.max()),
    )


def serving_figures(
    manifest: Manifest, results: list[dict]
) -> tuple[list[float], float, list[StageTiming]]:
    """(latencies ms of the measured requests, samples/s, per-stage timings)."""
    start: dict[int, float] = {}
    end: dict[int, float] = {}
    for res in results:
        start.update({int(r): t for r, t in res["start"].items()})
        end.update({int(r): t for r, t in res["end"].items()})
    warmup = results[0]["warmup"]
    measured = sorted(r for r in end if r >= warmup)
    latencies = [1e3 * (end[r] - start[r]) for r in measured]
    before = [end[r] for r in end if r < warmup]
    first = max(before) if before else min(start[r] for r in measured)
    span = max(end[r] for r in measured) - first
    samples = manifest.microbatch_size * len(measured)
    throughput = samples / span if span > 0 else 0.0
    timings = []
    for st in manifest.stages:
        for res in results:
            if st.index not in res["stages"] or res["replica"] != 0:
                continue
            events = [e for e in res["events"] if e[2] >= warmup]
            fwd = [e[4] - e[3] for e in events if e[0] == "F" and e[1] == st.index]
            comm = sum(e[4] - e[3] for e in events if e[0] in ("RECV", "SEND", "WAIT"))
            n = max(len(fwd), 1)
            timings.append(
                StageTiming(
                    stage=st.index,
                    device=st.device,
                    rank=res["rank"],
                    forward_ms=1e3 * sum(fwd) / n,
                    backward_ms=0.0,
                    comm_ms=1e3 * comm / n,
                    idle_ms=0.0,
                )
            )
    return latencies, throughput, timings


def serving_report(
    manifest: Manifest,
    warmup: int,
    latencies: list[float],
    throughput: float,
    plan,
    *,
    in_flight: int,
    providers: dict,
) -> Serving:
    """The stream's figures (`serving_figures`) next to the plan's (None: no prediction)."""
    stats = latency_stats(latencies)
    lat_pred, thr_pred = predicted_serving(plan) if plan is not None else (0.0, 0.0)
    return Serving(
        requests=len(latencies),
        warmup=warmup,
        in_flight=in_flight,
        providers={str(k): v for k, v in providers.items()},
        latency=stats,
        throughput_samples_per_s=throughput,
        requests_per_s=throughput / manifest.microbatch_size,
        predicted_latency_ms=lat_pred,
        predicted_throughput_samples_per_s=thr_pred,
        latency_measured_over_predicted=stats.p50_ms / lat_pred if lat_pred > 0 else 0.0,
        throughput_measured_over_predicted=throughput / thr_pred if thr_pred > 0 else 0.0,
    )
