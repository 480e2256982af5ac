"""Rich tables for the CLI. Rendering only: every figure comes from a report object."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from planner.fmt import nbytes, si


def wide_console() -> Console:
    """A console at least 120 columns wide, so tables stay readable when piped."""
    return Console(width=max(Console().width, 120))


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
