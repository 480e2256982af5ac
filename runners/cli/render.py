"""Rich tables for the CLI. Rendering only: every figure comes from a report object."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from planner.fmt import nbytes, si


def wide_console() -> Console:
    """A console at least 160 columns wide, so tables stay readable when piped."""
    return Console(width=max(Console().width, 160))


def print_inspect(report, *, show_nodes: bool = False, console: Console | None = None) -> None:
    console = console or wide_console()
    ins = ", ".join(
        f"{t.name} {'x'.join(map(str, t.shape or ['?']))} {t.dtype}" for t in report.inputs
    )
    console.print(
        f"[bold]{report.model}[/]  opset {report.opset}  {report.producer}  hash {report.graph_hash}\n"
        f"inputs: {ins}"
    )
    table = Table(show_footer=True, header_style="bold")
    table.add_column("#", justify="right", footer="")
    table.add_column("layer", footer="total")
    table.add_column("nodes", justify="right", footer=str(report.working_nodes))
    table.add_column("fwd FLOPs", justify="right", footer=si(report.forward_flops))
    table.add_column("bwd FLOPs", justify="right", footer=si(report.backward_flops))
    table.add_column("params", justify="right", footer=si(report.params))
    table.add_column("param bytes", justify="right", footer=nbytes(report.param_bytes))
    table.add_column("activations", justify="right", footer=nbytes(report.activation_bytes))
    table.add_column("out bytes", justify="right", footer="")
    for layer in report.layers:
        table.add_row(
            str(layer.index),
            layer.name,
            str(layer.nodes),
            si(layer.forward_flops),
            si(layer.backward_flops),
            si(layer.params),
            nbytes(layer.param_bytes),
            nbytes(layer.activation_bytes),
            nbytes(layer.output_bytes),
        )
        if show_nodes:
            for n in layer.node_names:
                table.add_row("", f"  [dim]{n}[/]", "", "", "", "", "", "", "")
    console.print(table)
    console.print(
        f"{report.nodes} ONNX nodes ({report.folded_nodes} folded shape/constant nodes), "
        f"{len(report.layers)} layers from {report.layer_source}; "
        f"{report.params:,} parameters ({nbytes(report.param_bytes)}), buffers {nbytes(report.buffer_bytes)}; "
        f"weights {'present' if report.has_weights else 'absent (graph only)'}"
    )
    if report.tensor_parallel is not None:
        print_sharding(report.tensor_parallel, console)


def print_sharding(tp, console: Console) -> None:
    """`inspect --tp N`: each block candidate, whether it splits N ways, and why not."""
    table = Table(header_style="bold", title=f"tensor parallel, {tp.degree} ways")
    for col in ("kind", "layers", "columns -> rows", "heads", "params", f"splits {tp.degree} ways"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for b in tp.blocks:
        layers = b.layers[0] if len(b.layers) == 1 else f"{b.layers[0]} .. {b.layers[-1]}"
        table.add_row(
            b.kind,
            layers if b.layers else "-",
            f"{len(b.columns)} -> {len(b.rows)}"
            if b.rows or not b.gathers
            else f"{len(b.columns)} -> gather",
            ",".join(map(str, b.heads)) or "-",
            si(b.params),
            "yes" if b.splits else f"no: {b.reason}",
        )
    console.print(table)
    total = tp.sharded_params + tp.replicated_params
    share = tp.sharded_params / total if total else 0.0
    console.print(
        f"{si(tp.sharded_params)} of {si(total)} parameters ({share:.0%}) in blocks that split "
        f"{tp.degree} ways; the rest replicated"
    )


def print_cluster(cluster, console: Console | None = None) -> None:
    console = console or wide_console()
    console.print(f"[bold]{cluster.summary()}[/]")
    table = Table(header_style="bold")
    for col in (
        "device",
        "kind",
        "fp32 TFLOP/s",
        "bf16 TFLOP/s",
        "memory",
        "bandwidth GB/s",
        "$/h",
    ):
        table.add_column(col, justify="left" if col in ("device", "kind") else "right")
    for dev_id in cluster.device_ids():
        d = cluster.device(dev_id)
        table.add_row(
            dev_id,
            d.name,
            f"{d.peak_flops('fp32') / 1e12:.1f}",
            f"{d.peak_flops('bf16') / 1e12:.1f}",
            nbytes(d.memory_bytes),
            f"{d.bandwidth_GBps:.0f}",
            f"{d.price_per_hour:.2f}" if d.price_per_hour is not None else "-",
        )
    console.print(table)
    links = Table(header_style="bold", title="links")
    for col in ("between", "link", "GB/s per direction", "latency us"):
        links.add_column(col)
    for node in cluster.nodes:
        links.add_row(
            f"inside {node.name}",
            node.link.name,
            f"{node.link.bandwidth_GBps:g}",
            f"{node.link.latency_us:g}",
        )
    if cluster.inter_node_link is not None:
        link = cluster.inter_node_link
        links.add_row(
            "between nodes", link.name, f"{link.bandwidth_GBps:g}", f"{link.latency_us:g}"
        )
    for o in cluster.overrides:
        links.add_row(
            " <-> ".join(o.between),
            o.link.name,
            f"{o.link.bandwidth_GBps:g}",
            f"{o.link.latency_us:g}",
        )
    console.print(links)


def _short_layers(names: list[str], limit: int = 3) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return f"{names[0]} .. {names[-1]} ({len(names)})"


def print_plan(plan, output: str | None = None, console: Console | None = None) -> None:
    console = console or wide_console()
    cfg = plan.config
    console.print(
        f"[bold]{plan.model.path}[/] on [bold]{plan.cluster.summary()}[/]\n"
        f"micro-batch {plan.model.microbatch_size} x {cfg.microbatches} micro-batches, {cfg.schedule}, {cfg.dtype}, "
        f"{cfg.optimizer}{', recompute' if cfg.recompute else ''}, objective {cfg.objective}"
    )
    lay = plan.layout
    if lay.data_parallel > 1 or lay.tensor_parallel > 1:
        tensor = f" x tensor parallel {lay.tensor_parallel}" if lay.tensor_parallel > 1 else ""
        console.print(
            f"layout: [bold]{lay.data_parallel} replica{'s' if lay.data_parallel != 1 else ''} x "
            f"{lay.pipeline_stages} stage{'s' if lay.pipeline_stages != 1 else ''}{tensor}[/]"
            f"{', ZeRO-1' if lay.zero else ''}; global batch {lay.global_batch} ({lay.batch}); "
            f"{lay.devices_used} devices; stages of replica 0 below"
            + (" (device: the first of its group)" if lay.tensor_parallel > 1 else "")
        )
    table = Table(header_style="bold")
    for col in (
        "stage",
        "device",
        "layers",
        "fwd ms",
        "bwd ms",
        "send ms",
        "memory / usable",
        "binds",
    ):
        table.add_column(col, justify="right" if col.endswith("ms") else "left")
    for st in plan.stages:
        mark = " *" if st.bottleneck else ""
        table.add_row(
            f"{st.index}{mark}",
            f"{st.device} {st.device_kind}"
            + (f" (+{st.tensor_parallel - 1})" if st.tensor_parallel > 1 else ""),
            _short_layers(st.layers),
            f"{st.forward_ms:.3f}",
            f"{st.backward_ms:.3f}",
            f"{max(st.send_ms, st.grad_send_ms):.3f}",
            f"{nbytes(st.peak_memory_bytes)} / {nbytes(st.memory_capacity_bytes)} ({st.peak_memory_bytes / st.memory_capacity_bytes:.0%})",
            st.binds,
        )
    console.print(table)
    p = plan.predicted
    s = plan.solver
    gap = f", gap {s.gap:.2%}" if s.gap is not None else ""
    console.print(
        f"predicted: {p.iteration_ms:.3f} ms per iteration, {p.throughput_samples_per_s:,.1f} samples/s, "
        f"bubble {p.bubble_fraction:.1%}, bottleneck {p.bottleneck} ({p.bottleneck_ms:.3f} ms)  [* marks it]\n"
        f"solver: {s.strategy} via {s.backend}, {s.status}{gap}, {s.seconds:.2f} s"
        + (f", warm start {s.warm_start}" if s.warm_start else "")
    )
    if plan.baselines:
        console.print(
            "baselines: "
            + "; ".join(
                f"{b.strategy} {b.throughput_samples_per_s:,.1f}/s{'' if b.fits else ' (does not fit)'}"
                for b in plan.baselines
            )
        )
    pricing = plan.pricing or {}
    share = pricing.get("share", {})
    if share and (share.get("measured") or share.get("family")):
        console.print(
            "pricing: "
            + ", ".join(
                f"{share.get(k, 0):.0%} {label}"
                for k, label in (
                    ("measured", "measured"),
                    ("family", "family fits"),
                    ("roofline", "roofline"),
                )
            )  # fmt: skip
            + " of the predicted compute"
            + _in_model_note(pricing.get("in_model") or {})
        )
    for line in plan.explanation:
        console.print(f"- {line}")
    routes = plan.routing.forward
    if routes:
        console.print(
            f"routing: {len(routes)} forward hops ({nbytes(sum(r.bytes for r in routes))} per micro-batch), "
            f"{len(plan.routing.backward)} gradient hops back"
        )
    if output:
        console.print(f"wrote {output}")


def print_manifest(manifest, bundle: str, console: Console | None = None) -> None:
    console = console or wide_console()
    table = Table(header_style="bold", title=f"{bundle}: weights {manifest.weights}")
    for col in ("stage", "file", "device", "nodes", "params", "inputs", "outputs", "relays"):
        table.add_column(col)
    for st in manifest.stages:
        table.add_row(
            str(st.index),
            st.file + (f" (+{len(st.tensor_files) - 1} shards)" if st.tensor_files else ""),
            f"{st.device} {st.device_kind}"
            + (f" (+{len(st.tensor_files) - 1})" if st.tensor_files else ""),
            str(st.nodes),
            si(st.param_count),
            ", ".join(t.name for t in st.inputs)[:48],
            ", ".join(t.name for t in st.outputs)[:48],
            ", ".join(r.tensor for r in st.relays)[:32] or "-",
        )
    console.print(table)
    if manifest.shared_weights:
        console.print(
            "shared weights: "
            + "; ".join(f"{w.name} on stages {w.stages}" for w in manifest.shared_weights)
        )
    console.print(f"wrote {bundle}/manifest.json and {len(manifest.stages)} stage models")


def print_simulation(report, *, trace=None, png=None, console: Console | None = None) -> None:
    console = console or wide_console()
    console.print(
        (f"{report.data_parallel} replicas of: " if report.data_parallel > 1 else "")
        + f"[bold]{report.schedule}[/], {report.microbatches} micro-batches"
        + (f", {report.virtual_stages} chunks per device" if report.virtual_stages > 1 else "")
        + f": {report.iteration_ms:.3f} ms per iteration, {report.throughput_samples_per_s:,.1f} samples/s, "
        f"bubble {report.bubble_fraction:.1%}"
    )
    if report.data_parallel > 1:
        console.print(
            f"replica 0's devices below; samples/s over all {report.data_parallel} replicas "
            f"({report.global_batch} samples per iteration)"
        )
    table = Table(header_style="bold")
    for col in ("device", "busy ms", "idle ms", "busy", "peak memory", "usable"):
        table.add_column(col, justify="left" if col == "device" else "right")
    for d in report.per_device:
        total = d.busy_ms + d.idle_ms
        table.add_row(
            d.device,
            f"{d.busy_ms:.3f}",
            f"{d.idle_ms:.3f}",
            f"{d.busy_ms / total:.0%}" if total else "-",
            nbytes(d.peak_memory_bytes),
            nbytes(d.memory_capacity_bytes),
        )
    console.print(table)
    for label, path in (("trace", trace), ("timeline", png)):
        if path:
            console.print(f"wrote {label} {path}")


def print_run(
    result, *, report: str | None = None, trace: str | None = None, console: Console | None = None
) -> None:
    console = console or wide_console()
    if result.serving is not None:
        _print_serving(result, console)
    else:
        _print_steps(result, console)
    if result.check is not None:
        c = result.check
        console.print(
            f"check {c.kind}: {'passed' if c.passed else 'FAILED'} (max abs {c.max_abs_diff:.2e}, "
            f"max rel {c.max_rel_diff:.2e}, tolerance {c.tolerance:.0e}; {c.detail})"
        )
    for label, path in (("report", report), ("trace", trace)):
        if path:
            console.print(f"wrote {label} {path}")


def _print_serving(result, console: Console) -> None:
    """An onnxruntime stream: per-stage forward times, latency percentiles, throughput."""
    s = result.serving
    console.print(
        f"[bold]serve[/] {result.bundle}: onnxruntime, {result.world_size} ranks "
        f"({result.backend}), "
        + (f"{result.data_parallel} replicas, " if result.data_parallel > 1 else "")
        + f"{s.requests} requests of {result.microbatch_size} samples "
        f"(+{s.warmup} warm-up), {s.in_flight} in flight per pipeline"
    )
    table = Table(header_style="bold")
    for col in ("stage", "device", "rank", "providers", "fwd ms/request", "comm ms/request"):
        table.add_column(col, justify="left" if col in ("device", "providers") else "right")
    for st in result.measured.per_stage:
        names = s.providers.get(str(st.stage), [])
        table.add_row(
            str(st.stage), st.device, str(st.rank),
            ",".join(n.removesuffix("ExecutionProvider") for n in names),
            f"{st.forward_ms:.3f}", f"{st.comm_ms:.3f}",
        )  # fmt: skip
    console.print(table)
    lat = s.latency
    console.print(
        f"latency p50 {lat.p50_ms:.3f} ms, p99 {lat.p99_ms:.3f} ms (mean {lat.mean_ms:.3f}); "
        f"predicted {s.predicted_latency_ms:.3f} ms; measured/predicted "
        f"{s.latency_measured_over_predicted:.2f}"
    )
    console.print(
        f"throughput {s.throughput_samples_per_s:,.1f} samples/s ({s.requests_per_s:,.1f} "
        f"requests/s); predicted {s.predicted_throughput_samples_per_s:,.1f}; "
        f"measured/predicted {s.throughput_measured_over_predicted:.2f}"
    )


def _print_steps(result, console: Console) -> None:
    m = result.measured
    console.print(
        f"[bold]{result.mode}[/] {result.bundle}: {result.world_size} ranks ({result.backend}), {result.schedule}, "
        + (
            f"{result.data_parallel} replicas{' (ZeRO-1)' if result.zero else ''} x "
            if result.data_parallel > 1
            else ""
        )
        + (
            f"tensor parallel {result.tensor_parallel}, "
            if getattr(result, "tensor_parallel", 1) > 1
            else ""
        )
        + f"{result.microbatches} x {result.microbatch_size} samples per step, {result.steps} steps"
    )
    table = Table(header_style="bold")
    for col in ("stage", "device", "rank", "fwd ms/mb", "bwd ms/mb", "comm ms", "idle ms"):
        table.add_column(col, justify="left" if col == "device" else "right")
    for st in m.per_stage:
        table.add_row(
            str(st.stage),
            st.device,
            str(st.rank),
            f"{st.forward_ms:.3f}",
            f"{st.backward_ms:.3f}",
            f"{st.comm_ms:.3f}",
            f"{st.idle_ms:.3f}",
        )
    console.print(table)
    console.print(
        f"measured {m.iteration_ms:.3f} ms per iteration (median), {m.throughput_samples_per_s:,.1f} samples/s; "
        f"predicted {result.predicted_iteration_ms:.3f} ms; measured/predicted {result.measured_over_predicted:.2f}"
    )
    if result.losses:
        console.print(
            f"loss: {result.losses[0]:.4f} -> {result.losses[-1]:.4f} over {len(result.losses)} steps"
        )


def print_profile(profile, path, console: Console | None = None) -> None:
    """The summary of a calibration profile written to `path`."""
    from runners.calibrate import profile_summary

    table = Table(title=f"calibration profile {path}", show_header=False)
    for what, value in profile_summary(profile):
        table.add_row(what, value)
    (console or wide_console()).print(table)


def print_timings(phases: dict[str, float], wall_s: float, *, stderr: bool = False) -> None:
    """Seconds per planning phase (`cost.timings`), and what no phase covers."""
    console = Console(stderr=stderr)
    table = Table(title="planning time by phase", title_justify="left")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    for name, seconds in phases.items():
        table.add_row(name, f"{seconds:.3f}", f"{seconds / wall_s:.0%}" if wall_s else "-")
    other = max(wall_s - sum(phases.values()), 0.0)
    table.add_row("other (cluster file, checks, sweeps)", f"{other:.3f}",
                  f"{other / wall_s:.0%}" if wall_s else "-")  # fmt: skip
    table.add_row("total", f"{wall_s:.3f}", "100%", style="bold")
    console.print(table)


def _in_model_note(costs: dict) -> str:
    """' (fits and roofline +30 us forward, +25 us backward per operator in a model)'."""
    if not costs:
        return ""

    def span(v: set[float]) -> str:
        lo, hi = min(v), max(v)
        return f"+{lo:.3g}" if lo == hi else f"+{lo:.3g}-{hi:.3g}"

    fwd = {f for f, _ in costs.values()}
    bwd = {b for _, b in costs.values()}
    return f" (fits and roofline {span(fwd)} us forward, {span(bwd)} us backward per operator in a model)"
