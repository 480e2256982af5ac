"""Output paths, `--json` purity, inference predictions and the what-if table's devices.

An output path that names a folder, or lies in a folder that does not exist, is refused
with one `error:` line and exit 2 *before any work starts*: the tests prove the order by
giving a model or bundle that does not exist either; the output error must come first.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cost.cluster import load_cluster
from cost.errors import PipeplanError
from cost.files import check_output_file, write_text_atomic
from planner.config import PlanConfig
from planner.graph.shapes import ShapeBindings
from planner.whatif.analysis import whatif
from runners.cli.whatif import footnotes, table_rows
from tests.test_cli_errors import assert_one_error_line, pipeplan

ROOT = Path(__file__).resolve().parents[1]
MLP = str(ROOT / "samples" / "models" / "mlp.onnx")
GPT = str(ROOT / "samples" / "models" / "gpt.onnx")
MIXED = str(ROOT / "samples" / "clusters" / "mixed.yaml")
NO_MODEL = "no/such/model.onnx"
NO_BUNDLE = "no/such/bundle"


def bad_outputs(tmp_path: Path) -> list[tuple[str, str]]:
    """(path, fragment of the error) for a folder and for a file in a missing folder."""
    return [(str(tmp_path), "is a folder"), (str(tmp_path / "missing" / "x.out"), "does not exist")]


@pytest.mark.parametrize("which", [0, 1], ids=["folder", "missing-folder"])
@pytest.mark.parametrize(
    "args, flag",
    [
        (["plan", NO_MODEL, "-c", MIXED, "-o"], "-o"),
        (["simulate", "no/plan.json", "--trace"], "--trace"),
        (["simulate", "no/plan.json", "--png"], "--png"),
        (["run", NO_BUNDLE, "--report"], "--report"),
        (["run", NO_BUNDLE, "--trace"], "--trace"),
        (["whatif", NO_MODEL, "-c", MIXED, "--png"], "--png"),
        (["calibrate", "--model", NO_MODEL, "-o"], "-o"),
    ],
)
def test_bad_output_path_is_refused_before_any_work(tmp_path, args, flag, which):
    path, fragment = bad_outputs(tmp_path)[which]
    result = pipeplan(*args, path)
    assert_one_error_line(result, fragment, flag)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_library_refuses_bad_output_paths(tmp_path):
    for path, fragment in bad_outputs(tmp_path):
        with pytest.raises(PipeplanError, match=fragment):
            check_output_file(path)
        with pytest.raises(PipeplanError, match=fragment):
            write_text_atomic(path, "x")
    check_output_file(tmp_path / "fine.json")  # a new file in an existing folder
    check_output_file(None)


def test_whatif_json_stdout_is_only_json(tmp_path):
    # The default strategy runs the ILP (HiGHS), whose banner must not reach stdout.
    r = pipeplan(
        "whatif", MLP, "-c", MIXED, "--batch", "8", "--add", "A100-80GB:1", "--no-cache", "--json"
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [row["scenario"] for row in data["rows"]][0] == "base"


def test_inspect_and_cluster_json_stdout_is_only_json():
    for args in (["inspect", MLP, "--batch", "8", "--json"], ["cluster", MIXED, "--json"]):
        r = pipeplan(*args)
        assert r.returncode == 0, r.stderr
        json.loads(r.stdout)


# --------------------------------------------------------------- what-if: used and idle


@pytest.fixture(scope="module")
def wide_report():
    """The small GPT at a batch that one pipeline of A100s serves: added devices idle."""
    return whatif(
        GPT,
        load_cluster(MIXED),
        PlanConfig(strategy="pipedream"),
        ShapeBindings(batch=16),
        adds=["A100-80GB:2"],
        cache=False,
    )


def test_whatif_rows_name_idle_devices_and_charge_only_used_ones(wide_report):
    cluster = load_cluster(MIXED)
    assert cluster.price_per_hour is not None  # the sample cluster prices its devices
    for row in wide_report.rows:
        assert row.fits
        assert row.devices_used + len(row.idle_devices) == row.devices
        assert len(set(row.idle_devices)) == len(row.idle_devices)
        assert row.cluster_cost_per_hour is not None
        assert row.cost_per_hour <= row.cluster_cost_per_hour + 1e-9
        if row.idle_devices:
            assert row.cost_per_hour < row.cluster_cost_per_hour
    assert any(row.idle_devices for row in wide_report.rows), [
        (r.scenario, r.devices_used, r.devices) for r in wide_report.rows
    ]


def test_whatif_table_shows_used_and_idle(wide_report):
    header, cells = table_rows(wide_report)
    col = header.index("devices used / idle")
    assert "$/h (used)" in header
    for row, cell in zip(wide_report.rows, cells, strict=True):
        assert cell[col] == f"{row.devices_used} / {len(row.idle_devices)}"
    notes = footnotes(wide_report)
    for row, note in zip(wide_report.rows, notes, strict=True):
        for device in row.idle_devices:
            assert device in note


# ------------------------------------------------------------- inference predictions


def test_inference_prediction_is_the_forward_part_of_the_schedule(tmp_path):
    from exporters.bundle import export
    from planner.api import plan
    from planner.simulate.replay import replay
    from runners.launch import _predicted_ms

    model = ROOT / "samples" / "models" / "gpt.onnx"
    p = plan(
        model,
        ROOT / "samples" / "clusters" / "a100x4.yaml",
        PlanConfig(stages=2, microbatches=4, strategy="greedy", schedule="1f1b"),
        ShapeBindings(batch=4),
    )
    bundle = tmp_path / "b"
    export(model, p, bundle)
    train = _predicted_ms(bundle, "train")
    infer = _predicted_ms(bundle, "infer")
    assert train == pytest.approx(p.predicted.iteration_ms)
    assert infer == pytest.approx(replay(p, inference=True).iteration_s * 1e3)
    # forwards alone: well under the training iteration (backward is about twice forward)
    assert 0 < infer < 0.7 * train
    forwards = sum(s.forward_ms for s in p.stages) * p.schedule.microbatches
    assert infer <= forwards + 1e-9  # the stages overlap: at most the serial sum
