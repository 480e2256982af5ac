"""`pipeplan whatif`: the command, its table and its chart (`planner.whatif` computes)."""

import os
from typing import TYPE_CHECKING, Annotated

import typer

from cost.files import check_output_file
from runners.cli.common import guarded, warn
from runners.cli.options import (
    BatchOpt,
    ClusterOpt,
    DimOpt,
    InputShapeOpt,
    KeepMergedOpt,
    LayerDepthOpt,
    LayersOpt,
    bindings,
    with_plan_options,
)

if TYPE_CHECKING:
    from planner.whatif.analysis import WhatIfReport


@guarded
@with_plan_options
def whatif(
    model: Annotated[str, typer.Argument(help="ONNX model file (one micro-batch).")],
    cluster: ClusterOpt,
    add: Annotated[
        list[str] | None,
        typer.Option(
            "--add",
            help="Sweep: add N devices of KIND for each N, e.g. A100-80GB:1,2,4 (repeatable).",
        ),
    ] = None,
    replace: Annotated[
        list[str] | None,
        typer.Option(
            "--replace",
            help="Scenario: every device of kind OLD becomes NEW, e.g. V100-32GB=H100-80GB.",
        ),
    ] = None,
    link: Annotated[
        list[str] | None,
        typer.Option(
            "--link",
            help="Scenario: this inter-node link preset (intra-node on a one-node cluster).",
        ),
    ] = None,
    min_devices: Annotated[
        str | None,
        typer.Option(
            "--min-devices", help="Also find the fewest devices of KIND the model trains on."
        ),
    ] = None,
    png: Annotated[
        str | None,
        typer.Option("--png", help="Write throughput, samples/$ and memory charts (PNG)."),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the report as one JSON object.")
    ] = False,
    scaling: Annotated[
        str,
        typer.Option(
            "--scaling",
            help="weak: each data-parallel replica runs the global batch; strong: split it.",
        ),
    ] = "weak",
    no_data_parallel: Annotated[
        bool,
        typer.Option("--no-data-parallel", help="Pipelines only: one replica per scenario."),
    ] = False,
    no_cache: Annotated[
        bool,
        typer.Option(
            "--no-cache", help="Neither read nor write the plan cache ($PIPEPLAN_CACHE_DIR)."
        ),
    ] = False,
    dim: DimOpt = None,
    batch: BatchOpt = None,
    input_shape: InputShapeOpt = None,
    layers: LayersOpt = None,
    layer_depth: LayerDepthOpt = None,
    keep_merged_weights: KeepMergedOpt = False,
    *,
    config,
) -> None:
    """What if the cluster had more, other or better-linked devices? One row per scenario."""
    from planner.whatif.analysis import whatif as run_whatif
    from planner.whatif.cache import PlanCache
    from runners.cli.progress import ProgressBar

    check_output_file(png, "--png")
    with ProgressBar("planning", enabled=not json_out) as progress:
        report = run_whatif(
            model,
            cluster,
            config,
            bindings(dim, batch, input_shape),
            adds=add or [],
            replaces=replace or [],
            links=link or [],
            min_devices_kind=min_devices,
            progress=progress,
            layers_file=layers,
            layer_depth=layer_depth,
            data_parallel=not no_data_parallel,
            scaling=scaling,
            cache=PlanCache(enabled=not no_cache),
            keep_merged_weights=keep_merged_weights,
        )
    warn(report.warnings)
    if png:
        plot_whatif(report, png)
    if json_out:
        print(report.model_dump_json(indent=2))
        return
    print_whatif(report, png)


# ----------------------------------------------------------------------------- table


def _pct(value: float) -> str:
    return f"{value:.1%}" if value < 0.1 else f"{value:.0%}"


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def table_rows(report: "WhatIfReport") -> tuple[list[str], list[list[str]]]:
    """Header and cells of the what-if table (also used for docs in markdown)."""
    from planner.fmt import nbytes

    header = [
        "scenario",
        "devices used / idle",
        "fits",
        "stages x replicas",
        "samples/s",
        "speed-up",
        "peak mem / usable",
        "bubble",
        "$/h (used)",
        "samples/$",
        "gain/device",
    ]
    cells = []
    for row in report.rows:
        cells.append(
            [
                row.scenario,
                f"{row.devices_used} / {len(row.idle_devices)}"
                if row.fits
                else f"- / {row.devices}",
                "yes" if row.fits else "no",
                (
                    f"{row.stages} x {row.replicas}"
                    + (f" (tp {row.tensor_parallel})" if row.tensor_parallel > 1 else "")
                )
                if row.fits
                else "-",
                _num(row.throughput_samples_per_s) if row.fits else "0",
                _num(row.speedup, "{:.2f}x"),
                (
                    f"{nbytes(row.peak_memory_bytes)} / {nbytes(row.usable_memory_bytes or 0)} "
                    f"({_pct(row.peak_memory_fraction)})"
                    if row.peak_memory_bytes is not None and row.peak_memory_fraction is not None
                    else "-"
                ),
                _num(row.bubble_fraction, "{:.1%}"),
                _num(row.cost_per_hour, "{:,.2f}"),
                _num(row.samples_per_dollar, "{:,.3g}"),
                _num(row.marginal_gain_per_device, "{:+,.0f}"),
            ]
        )
    return header, cells


def _ids(ids: list[str], limit: int = 8) -> str:
    return ", ".join(ids) if len(ids) <= limit else ", ".join(ids[:limit]) + f", ... ({len(ids)})"


def footnotes(report: "WhatIfReport") -> list[str]:
    lines = []
    for row in report.rows:
        if row.fits:
            lines.append(
                f"{row.scenario}: {row.layout}, {row.schedule}, iteration "
                f"{row.iteration_ms:.3f} ms (all-reduce {row.allreduce_ms:.3f} ms), "
                f"global batch {row.global_batch}"
                + (f"; idle: {_ids(row.idle_devices)}" if row.idle_devices else "")
                + (f"; {row.note}" if row.note else "")
            )
        else:
            lines.append(f"{row.scenario}: does not fit: {row.note}")
    if report.min_devices_kind:
        if report.min_devices is not None:
            lines.append(
                f"fewest {report.min_devices_kind} the model trains on: {report.min_devices} "
                f"({report.min_devices_note})"
            )
        else:
            lines.append(f"fewest {report.min_devices_kind}: none found: {report.min_devices_note}")
    return lines


def print_whatif(report: "WhatIfReport", png: str | None = None, console=None) -> None:
    from rich.markup import escape
    from rich.table import Table

    from runners.cli.render import wide_console

    console = console or wide_console()
    c = report.config
    console.print(
        f"[bold]{escape(report.model)}[/] on {escape(report.cluster)}\n"
        f"micro-batch {report.bindings.get('batch') or 'as in the graph'} x "
        f"{'auto' if c.auto_microbatches else c.microbatches} micro-batches, {c.schedule}, "
        f"{c.dtype}, {c.optimizer}, strategy {c.strategy}; data parallelism "
        f"{'on, ' + report.scaling + ' scaling' if report.data_parallel else 'off'}"
    )
    header, cells = table_rows(report)
    table = Table(header_style="bold")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in cells:
        table.add_row(*(escape(x) for x in row))
    console.print(table)
    for line in footnotes(report):
        console.print(f"- {escape(line)}", highlight=False)
    console.print(
        f"{len(report.rows)} scenarios in {report.seconds:.1f} s; plans: "
        f"{report.cache_misses} solved, {report.cache_hits} from the cache"
        + (f"; chart: {png}" if png else ""),
        highlight=False,
    )


# ----------------------------------------------------------------------------- chart


def plot_whatif(report: "WhatIfReport", path: str | os.PathLike[str], dpi: int = 120) -> None:
    """Throughput and samples per dollar against devices (one line per sweep; other
    scenarios as single points), and the fullest device's peak memory per scenario.
    matplotlib's object API (no pyplot), PNG written atomically."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = report.rows
    fig = Figure(figsize=(15, 4.8), dpi=dpi, layout="constrained")
    tput, value, mem = fig.subplots(1, 3)
    base = rows[0]
    sweeps: dict[str, list] = {}
    singles = []
    for row in rows[1:]:
        if row.sweep.startswith("+"):
            sweeps.setdefault(row.sweep, []).append(row)
        else:
            singles.append(row)
    markers = "os^Dv<>p*h"
    for ax, field, label in (
        (tput, "throughput_samples_per_s", "samples/s"),
        (value, "samples_per_dollar", "samples per $"),
    ):
        ax.plot(
            [base.devices],
            [getattr(base, field) or 0],
            "k*",
            markersize=12,
            label=f"base ({base.device_kinds})",
        )
        for i, (name, rs) in enumerate(sweeps.items()):
            xs = [base.devices] + [r.devices for r in rs]
            ys = [getattr(base, field) or 0] + [getattr(r, field) or 0 for r in rs]
            ax.plot(xs, ys, marker=markers[i % len(markers)], label=f"sweep {name}")
        for r in singles:
            ax.plot([r.devices], [getattr(r, field) or 0], "X", markersize=9, label=r.scenario)
        for r in rows:
            if r.fits:
                ax.annotate(
                    f"{r.stages}x{r.replicas}",
                    (r.devices, getattr(r, field) or 0),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=6,
                    color="#555555",
                )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.margins(x=0.08)
        ax.set_xlabel("devices (labels: stages x replicas)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="best")
    tput.set_title("predicted throughput", fontsize=10, loc="left")
    value.set_title("samples per dollar", fontsize=10, loc="left")

    names = [r.scenario for r in rows]
    peaks = [(r.peak_memory_bytes or 0) / 1e9 for r in rows]
    colours = ["#1f77b4" if r.fits else "#d62728" for r in rows]
    bars = mem.bar(range(len(rows)), peaks, color=colours)
    for bar, r in zip(bars, rows, strict=True):
        text = _pct(r.peak_memory_fraction) if r.peak_memory_fraction is not None else "no fit"
        mem.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    mem.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=7)
    mem.set_ylabel("GB")
    mem.set_title("peak memory per device (largest; label: fullest, % usable)", fontsize=10)
    mem.grid(axis="y", alpha=0.3)
    fig.suptitle(f"what-if: {report.model} on {report.cluster}", fontsize=11)

    from cost.files import save_figure_atomic

    save_figure_atomic(fig, path, dpi=dpi)
