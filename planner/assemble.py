"""Turn a split and its simulated schedule into the plan file (`planner.plan_file.Plan`).

Everything here is presentation of figures computed upstream: per-stage rows (times,
memory, what binds each stage), the forward and backward routing of the tensors that
cross stage boundaries (relayed hop by hop, so every route joins neighbours), the
prediction from the simulator beside the partitioner's closed form, the solver's report,
the baselines, and a short explanation of the choice.
"""

from __future__ import annotations

from pathlib import Path

from cost.tensor import dtype_name
from planner.graph.layers import LayerGraph
from planner.graph.load import ModelGraph
from planner.graph.shapes import ShapeBindings
from planner.partition.objective import Assignment, Evaluation
from planner.partition.problem import Problem
from planner.partition.search import Candidate, Split
from planner.plan_file import (
    BaselineRow,
    ModelInfo,
    Plan,
    Predicted,
    Route,
    Routing,
    ScheduleTrial,
    Simulation,
    SolverReport,
    StagePlan,
    TensorRef,
    device_timelines,
)
from planner.simulate.choose import TimedPipeline
from planner.simulate.costs import stage_memory


def assemble_plan(
    mg: ModelGraph,
    lg: LayerGraph,
    problem: Problem,
    split: Split,
    timed: TimedPipeline,
    tried: list[TimedPipeline],
    bindings: ShapeBindings,
) -> Plan:
    """The plan file of `split`, scheduled and simulated as `timed` (`tried`: every
    schedule simulated for it)."""
    report = solver_report(split)
    rows = [baseline_row(c, mg, problem) for c in split.baselines]
    a, ev = timed.assignment, timed.evaluation
    return Plan(
        model=model_info(mg),
        config=problem.config,
        bindings=bindings.as_dict(),
        cluster=problem.cluster,
        stages=stage_rows(mg, lg, problem, a, ev),
        routing=routing(mg, problem, a, ev),
        predicted=predicted(mg, problem, split.evaluation, timed),
        solver=report,
        simulation=simulation(timed, tried),
        schedule=timed.schedule,
        baselines=rows,
        explanation=explain(problem, a, ev, report, rows, timed),
        warnings=list(mg.warnings) + lg.warnings,
    )


def microbatch_size(mg: ModelGraph) -> int:
    """The first dimension of the first graph input with a known shape (1 if none)."""
    for name in mg.inputs:
        info = mg.tensors.get(name)
        if info is not None and info.shape:
            return info.shape[0]
    return 1


def samples_per_iteration(mg: ModelGraph, problem: Problem) -> int:
    """Micro-batch size x micro-batches (one micro-batch for the latency objective)."""
    config = problem.config
    return microbatch_size(mg) * (config.microbatches if config.objective == "throughput" else 1)


def solver_report(split: Split) -> SolverReport:
    return SolverReport(
        strategy=split.strategy,
        backend=split.backend,
        status=split.status,
        optimal=split.status == "optimal",
        objective=split.evaluation.objective,
        bound=split.bound,
        gap=split.gap,
        seconds=split.seconds,
        build_seconds=split.build_seconds,
        variables=split.variables,
        constraints=split.constraints,
        warm_start=split.warm_start,
    )


def baseline_row(c: Candidate, mg: ModelGraph, problem: Problem) -> BaselineRow:
    samples = samples_per_iteration(mg, problem)
    ev = c.evaluation
    return BaselineRow(
        strategy=c.strategy,
        stages=c.assignment.num_stages,
        iteration_ms=ev.iteration_s * 1e3,
        throughput_samples_per_s=samples / ev.iteration_s if ev.iteration_s > 0 else 0.0,
        fits=ev.fits,
    )


def tensor_ref(mg: ModelGraph, name: str) -> TensorRef:
    info = mg.tensors.get(name)
    return TensorRef(
        name=name,
        shape=list(info.shape) if info is not None and info.shape is not None else None,
        dtype=dtype_name(info.dtype) if info is not None else "unknown",
    )


def routing(mg: ModelGraph, problem: Problem, a: Assignment, ev: Evaluation) -> Routing:
    """One forward route per tensor and boundary it crosses; the gradients of the
    floating-point ones travel back the same hops (training)."""
    forward, backward = [], []
    flows = {f.tensor: f for f in problem.flows}
    for s, names in enumerate(ev.routes):
        for t in names:
            flow = flows[t]
            ref = tensor_ref(mg, t)
            consumers = sorted(
                {a.stage_of_layer[c] for c in flow.consumers} - {a.stage_of_layer[flow.producer]}
            )
            route = Route(
                tensor=t,
                src_stage=s,
                dst_stage=s + 1,
                bytes=flow.nbytes,
                origin_stage=a.stage_of_layer[flow.producer],
                consumer_stages=consumers,
                shape=ref.shape,
                dtype=ref.dtype,
            )
            forward.append(route)
            if flow.is_float and problem.training:
                backward.append(route.model_copy(update={"src_stage": s + 1, "dst_stage": s}))
    return Routing(forward=forward, backward=backward)


def _binds(st, ev: Evaluation) -> str:
    """What limits a stage: memory (over, or over 90% full), compute or link (it is the
    bottleneck), or nothing."""
    if not st.fits:
        return "memory"
    slowest = max(st.occupied_s, st.send_s, st.grad_send_s)
    if abs(slowest - ev.bottleneck_s) <= 1e-12 * max(ev.bottleneck_s, 1e-30):
        return "compute" if st.occupied_s >= max(st.send_s, st.grad_send_s) else "link"
    if st.memory_bytes >= 0.9 * st.capacity_bytes:
        return "memory"
    return "nothing"


def stage_rows(
    mg: ModelGraph, lg: LayerGraph, problem: Problem, a: Assignment, ev: Evaluation
) -> list[StagePlan]:
    mg_params = mg.params
    cluster = problem.cluster
    graph_inputs = {t: set(ls) for t, ls in lg.input_consumers.items()}
    memory = stage_memory(problem, a, ev)
    rows = []
    for st in ev.stages:
        layers = [lg.layers[i] for i in st.layers]
        params = {p for layer in layers for p in layer.params}
        spec = cluster.device(st.device)
        rows.append(
            StagePlan(
                index=st.index,
                device=st.device,
                device_kind=spec.name,
                node=cluster.node_of(st.device),
                layers=[layer.name for layer in layers],
                nodes=[n for layer in layers for n in layer.nodes],
                graph_inputs=sorted(t for t, ls in graph_inputs.items() if ls & set(st.layers)),
                graph_outputs=sorted(t for t, li in lg.output_producers.items() if li in st.layers),
                forward_ms=st.forward_s * 1e3,
                backward_ms=st.backward_s * 1e3,
                weight_grad_ms=st.weight_grad_s * 1e3,
                compute_ms=st.compute_s * 1e3,
                optimizer_ms=st.optimizer_s * 1e3,
                sync_ms=st.sync_s * 1e3,
                tensor_comm_ms=st.tensor_s * 1e3,
                send_blocking_ms=st.send_blocking_s * 1e3,
                send_ms=st.send_s * 1e3,
                grad_send_ms=st.grad_send_s * 1e3,
                param_bytes=sum(mg_params[p].nbytes for p in params if mg_params[p].trainable),
                params_state_bytes=st.params_state_bytes,
                activation_bytes=st.activation_bytes,
                in_flight_microbatches=st.in_flight,
                static_memory_bytes=memory[st.index][0],
                activation_bytes_per_microbatch=memory[st.index][1],
                peak_memory_bytes=st.memory_bytes,
                memory_capacity_bytes=st.capacity_bytes,
                device_memory_bytes=spec.memory_bytes,
                binds=_binds(st, ev),
                bottleneck=ev.bottleneck == f"stage {st.index} compute"
                or ev.bottleneck.startswith(f"link {st.index}->"),
            )
        )
    return rows


def predicted(
    mg: ModelGraph, problem: Problem, analytic: Evaluation, timed: TimedPipeline
) -> Predicted:
    """The simulator's figures for the chosen schedule; the closed form beside them."""
    samples = samples_per_iteration(mg, problem)
    sim, ev = timed.sim, timed.evaluation
    return Predicted(
        schedule=timed.kind,
        iteration_ms=sim.iteration_s * 1e3,
        throughput_samples_per_s=samples / sim.iteration_s if sim.iteration_s > 0 else 0.0,
        bottleneck_ms=ev.bottleneck_s * 1e3,
        bottleneck=ev.bottleneck,
        bubble_fraction=sim.bubble_fraction,
        global_batch=samples,
        analytic_iteration_ms=analytic.iteration_s * 1e3,
    )


def simulation(timed: TimedPipeline, tried: list[TimedPipeline]) -> Simulation:
    return Simulation(
        per_device=device_timelines(timed.sim, timed.capacity),
        tried=[
            ScheduleTrial(
                kind=t.kind,
                virtual_stages=t.virtual_stages,
                iteration_ms=t.sim.iteration_s * 1e3,
                fits=t.fits,
            )
            for t in tried
        ],
    )


def model_info(mg: ModelGraph) -> ModelInfo:
    return ModelInfo(
        path=str(Path(mg.path)),
        graph_hash=mg.graph_hash,
        producer=mg.producer,
        opset=mg.opset,
        symbols=mg.symbols,
        microbatch_size=microbatch_size(mg),
        inputs=[tensor_ref(mg, t) for t in mg.inputs],
        outputs=[tensor_ref(mg, t) for t in mg.outputs],
        params=mg.param_count,
        param_bytes=mg.param_bytes,
        has_weights=mg.has_weights,
        merged_weights=len(mg.aliases.merges),
        keep_merged_weights=not mg.aliases.separated,
    )


def explain(
    problem: Problem,
    a: Assignment,
    ev: Evaluation,
    report: SolverReport,
    rows: list[BaselineRow],
    timed: TimedPipeline,
) -> list[str]:
    """Why this plan: devices used, the bottleneck, the gain over the best baseline, the
    schedule, memory nearly full."""
    lines = []
    used = len(set(a.devices))
    total = problem.num_devices
    idle = (
        ""
        if used == total
        else ": more stages would add fill/drain time or link cost than they save "
        f"({total - used} left idle)"
    )
    lines.append(f"{used} of {total} devices used{idle}")
    lines.append(
        f"bottleneck: {ev.bottleneck} at {ev.bottleneck_s * 1e3:.3f} ms per micro-batch; "
        f"simulated bubble {timed.sim.bubble_fraction:.1%}"
    )
    fitting = [r for r in rows if r.fits]
    if fitting and report.objective:
        best = min(fitting, key=lambda r: r.iteration_ms)
        lines.append(
            f"{report.strategy} gives {best.iteration_ms / (report.objective * 1e3):.2f}x the "
            f"throughput of the best baseline ({best.strategy}, {best.iteration_ms:.3f} ms per "
            "iteration, closed form)"
        )
    if problem.training:
        chunks = (
            f" with {timed.virtual_stages} chunks per device" if timed.kind == "interleaved" else ""
        )
        lines.append(
            f"schedule {timed.kind}{chunks}: simulated {timed.sim.iteration_s * 1e3:.3f} ms per "
            "iteration"
        )
    tight = [s for s in ev.stages if s.memory_bytes > 0.9 * s.capacity_bytes]
    if tight:
        lines.append(
            "memory nearly full on "
            + ", ".join(f"stage {s.index} ({s.memory_bytes / s.capacity_bytes:.0%})" for s in tight)
        )
    return lines
