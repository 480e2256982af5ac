"""The plan of the whole job: one replica's plan, written in the cluster's device ids, with
the layout, every replica's devices, the job's figures and why this degree.

A replica is planned on its own cluster (`ReplicaLayout.sub`, devices `n0.0`, ...);
`job_plan` renames those devices to replica 0's ids in the given cluster (stages,
schedule, simulation), lists each replica's device per stage, and scales what is per
replica to the job: samples per iteration and per second times r (every replica runs the
same iteration, the all-reduce inside it).
"""

from __future__ import annotations

from cost.cluster import Cluster
from planner.parallel.search import Trial
from planner.plan_file import BaselineRow, Layout, LayoutTrial, Plan
from planner.schedule.actions import Schedule


def _rename_schedule(schedule: Schedule | None, mapping: dict[str, str]) -> Schedule | None:
    if schedule is None:
        return None
    return schedule.model_copy(
        update={
            "stage_device": [mapping[d] for d in schedule.stage_device],
            "actions": {mapping[d]: acts for d, acts in schedule.actions.items()},
        }
    )


def _shape(cluster: Cluster) -> str:
    return cluster.summary().split(": ", 1)[-1]


def layout_trials(trials: list[Trial], chosen: Trial, microbatch_size: int) -> list[LayoutTrial]:
    """Every candidate priced, for the plan file (best first)."""
    return [
        LayoutTrial(
            data_parallel=t.option.replicas,
            tensor_parallel=t.option.tensor_parallel,
            pipeline_stages=t.stages,
            shape=_shape(t.option.layout.sub)
            + (
                f" (each a group of {t.option.tensor_parallel})"
                if t.option.tensor_parallel > 1
                else ""
            ),
            replica_devices=t.option.layout.sub.num_devices * t.option.tensor_parallel,
            fits=t.fits,
            iteration_ms=t.iteration_s * 1e3 if t.split is not None else None,
            throughput_samples_per_s=t.throughput(microbatch_size),
            allreduce_ms=t.sync_s * 1e3,
            chosen=t is chosen,
            pruned=t.pruned,
            bound_samples_per_s=t.bound_throughput if t.bound_throughput < float("inf") else None,
            note=t.error,
        )
        for t in trials
    ]


def job_plan(
    replica_plan: Plan, cluster: Cluster, chosen: Trial, trials: list[Trial], microbatch_size: int
) -> Plan:
    """The job's plan from the chosen trial's replica plan (module docstring)."""
    layout = chosen.option.layout
    r = layout.replicas_count
    mapping = layout.replicas[0]
    stages = [
        st.model_copy(
            update={"device": mapping[st.device], "node": cluster.node_of(mapping[st.device])}
        )
        for st in replica_plan.stages
    ]
    replicas = [[rep[st.device] for st in replica_plan.stages] for rep in layout.replicas]
    used = {d for rep in replicas for d in rep}
    simulation = replica_plan.simulation
    if simulation is not None:
        simulation = simulation.model_copy(
            update={
                "per_device": [
                    t.model_copy(update={"device": mapping[t.device]})
                    for t in simulation.per_device
                ]
            }
        )
    per = replica_plan.predicted
    predicted = per.model_copy(
        update={
            "throughput_samples_per_s": per.throughput_samples_per_s * r,
            "global_batch": per.global_batch * r,
        }
    )
    baselines = [
        BaselineRow(
            **{**b.model_dump(), "throughput_samples_per_s": b.throughput_samples_per_s * r}
        )
        for b in replica_plan.baselines
    ]
    config = replica_plan.config
    job_layout = Layout(
        data_parallel=r,
        pipeline_stages=len({st.device for st in stages}),
        zero=config.zero if r > 1 else 0,
        global_batch=predicted.global_batch,
        batch="fixed-global" if config.global_batch is not None else "per-replica",
        microbatches_per_replica=config.microbatches,
        devices_used=len(used) * chosen.option.tensor_parallel,
        tensor_parallel=chosen.option.tensor_parallel,
        devices_idle=[d for d in cluster.device_ids() if d not in used],
        shape=_shape(layout.sub),
    )
    tried = layout_trials(trials, chosen, microbatch_size)
    return replica_plan.model_copy(
        update={
            "cluster": cluster,
            "stages": stages,
            "schedule": _rename_schedule(replica_plan.schedule, mapping),
            "simulation": simulation,
            "predicted": predicted,
            "baselines": baselines,
            "layout": job_layout,
            "replicas": replicas,
            "layouts_tried": tried,
            "explanation": explain_layout(job_layout, tried)
            + [f"each replica: {line}" if r > 1 else line for line in replica_plan.explanation],
        }
    )


def explain_layout(layout: Layout, tried: list[LayoutTrial]) -> list[str]:
    """Why this degree: the chosen layout against pipeline-only and pure data parallelism
    (closed form), when they were priced."""
    chosen = next(t for t in tried if t.chosen)
    if len(tried) <= 1 and layout.data_parallel == 1 and chosen.tensor_parallel == 1:
        return []
    tensor = f" x tensor {chosen.tensor_parallel}" if chosen.tensor_parallel > 1 else ""
    line = (
        f"layout {layout.data_parallel} replica(s) x {chosen.pipeline_stages} stage(s){tensor} "
        f"on {layout.devices_used} devices: {chosen.throughput_samples_per_s:.4g} samples/s "
        f"(closed form, {layout.global_batch} samples per iteration"
        + (f", all-reduce {chosen.allreduce_ms:.3g} ms" if layout.data_parallel > 1 else "")
        + ")"
    )
    lines = [line]
    pipeline_only = next(
        (t for t in tried if t.data_parallel == 1 and t.tensor_parallel == 1), None
    )
    if pipeline_only is not None and not pipeline_only.chosen:
        lines.append("pipeline only: " + _figure(pipeline_only, chosen))
    if chosen.tensor_parallel > 1:
        untensored = next((t for t in tried if t.tensor_parallel == 1 and t.fits), None)
        untensored = untensored or next((t for t in tried if t.tensor_parallel == 1), None)
        if untensored is not None and untensored is not pipeline_only:
            lines.append("without tensor parallelism: " + _figure(untensored, chosen))
    pure = [
        t
        for t in tried
        if t.data_parallel > 1 and t.replica_devices == 1 and t.tensor_parallel == 1
    ]
    pure_dp = max(pure, key=lambda t: t.data_parallel, default=None)
    if pure_dp is not None and not pure_dp.chosen:
        lines.append(
            f"pure data parallelism ({pure_dp.data_parallel} x 1 device): "
            + _figure(pure_dp, chosen)
        )
    return lines


def _figure(t: LayoutTrial, chosen: LayoutTrial) -> str:
    if t.pruned:
        return f"at most {t.bound_samples_per_s:.4g} samples/s (a bound: not solved)"
    if not t.fits:
        return f"does not fit ({t.note})" if t.note else "does not fit"
    ratio = (
        chosen.throughput_samples_per_s / t.throughput_samples_per_s
        if t.throughput_samples_per_s
        else 0
    )
    tensor = f" x tensor {t.tensor_parallel}" if t.tensor_parallel > 1 else ""
    return (
        f"{t.data_parallel} x {t.pipeline_stages} stage(s){tensor}, {t.throughput_samples_per_s:.4g} samples/s "
        f"(the chosen layout is {ratio:.2f}x)"
    )
