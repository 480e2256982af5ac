"""What-if sweeps: scenarios, replicas, monotonicity, --min-devices, the plan cache, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cost.cluster import cluster_from_dict, load_cluster
from cost.devices import catalog_device
from cost.errors import DoesNotFitError, PipeplanError
from cost.links import PRESETS
from planner.api import plan_graph
from planner.config import PlanConfig
from planner.graph.inspect import load_model
from planner.graph.shapes import ShapeBindings
from planner.parallel.replicas import replica_layouts
from planner.whatif.analysis import whatif
from planner.whatif.cache import PlanCache, plan_key
from planner.whatif.scenarios import add_devices, build_scenarios, homogeneous_cluster, with_link

ROOT = Path(__file__).resolve().parents[1]
GPT = str(ROOT / "samples" / "models" / "gpt.onnx")
MIXED = str(ROOT / "samples" / "clusters" / "mixed.yaml")
A100 = catalog_device("A100-80GB")
FAST = PlanConfig(strategy="pipedream")
# The small GPT needs several of these at --batch 8 -m 2 (tests/test_plan.py).
TINY = {"like": "A100-80GB", "memory_GB": 0.004}


def one_node(devices: list, link: str = "NVLink3"):
    return cluster_from_dict({"name": "t", "nodes": [{"devices": devices, "link": link}]})


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> PlanCache:
    return PlanCache(tmp_path_factory.mktemp("plans"))


# ------------------------------------------------------------------ scenarios (pure)


def test_add_fills_nodes_to_eight_then_new_nodes_with_the_kinds_link():
    mixed = load_cluster(MIXED)
    c = add_devices(mixed, A100, 7)
    assert [len(n.devices) for n in c.nodes] == [8, 2, 3]
    assert c.nodes[2].link.name == "NVLink3" and c.inter_node_link.name == "IB-HDR"
    assert c.device_ids()[:6] == mixed.device_ids()[:4] + ["n0.4", "n0.5"]
    h = add_devices(one_node(["2x T4"], link="PCIe4"), catalog_device("H100-80GB"), 3)
    assert h.nodes[1].link.name == "NVLink4"  # no H100 node yet: the kind's default
    assert h.inter_node_link.name == "IB-HDR"  # one node before: the default inter link


def test_scenario_names_order_and_default_sweep():
    mixed = load_cluster(MIXED)
    names = [
        s.name
        for s in build_scenarios(
            mixed, ["A100-80GB:4,2"], ["V100-32GB=H100-80GB"], ["IB-NDR", "100GbE"]
        )
    ]
    assert names == [
        "base",
        "+2 A100-80GB",
        "+4 A100-80GB",
        "V100-32GB->H100-80GB",
        "link IB-NDR",
        "link 100GbE",
    ]
    default = build_scenarios(mixed)
    assert [s.name for s in default] == ["base", "+4 A100-80GB", "+12 A100-80GB"]
    assert [s.cluster.num_devices for s in default] == [6, 10, 18]
    swapped = build_scenarios(mixed, replaces=["v100-32gb=H100-80GB"])[1].cluster
    assert [swapped.device(d).name for d in ("n0.0", "n1.0", "n1.1")] == ["A100-80GB"] + [
        "H100-80GB"
    ] * 2
    single, intra = with_link(one_node(["4x A100-80GB"]), PRESETS["PCIe4"])
    assert intra and single.nodes[0].link.name == "PCIe4"


def test_replica_layouts_are_identical_disjoint_and_keep_the_most_replicas():
    h16 = load_cluster(ROOT / "samples" / "clusters" / "h100x16.yaml")
    layouts = replica_layouts(h16)
    assert layouts[0].replicas_count == 1 and layouts[0].sub.num_devices == 16
    shapes = {(x.replicas_count, x.sub.num_devices, len(x.sub.nodes)) for x in layouts}
    assert {(2, 8, 1), (2, 8, 2), (4, 4, 1), (16, 1, 1)} <= shapes
    for layout in layouts:
        used = [d for rep in layout.replicas for d in rep.values()]
        assert len(used) == len(set(used)) <= 16
        for rep in layout.replicas:
            assert set(rep) == set(layout.sub.device_ids())
            for sub_id, dev in rep.items():
                assert h16.device(dev) == layout.sub.device(sub_id)
    # 8 + 2 devices: ten one-device replicas although the nodes differ
    ten = add_devices(homogeneous_cluster(A100, 8), A100, 2)
    assert max(x.replicas_count for x in replica_layouts(ten)) == 10
    mixed = load_cluster(MIXED)
    assert any(
        x.replicas_count == 2 and x.sub.summary().endswith("(3 devices, 2 nodes)")
        for x in replica_layouts(mixed)
    )


# ------------------------------------------------------------------ monotonicity


@pytest.mark.parametrize("data_parallel", [True, False])
def test_adding_a100s_never_lowers_throughput(cache, data_parallel):
    report = whatif(
        GPT,
        one_node(["A100-80GB"]),
        PlanConfig(time_limit_s=5),
        ShapeBindings(batch=64),
        adds=["A100-80GB:1,2,3,4,5"],
        data_parallel=data_parallel,
        cache=cache,
    )
    assert all(r.replicas == 1 for r in report.rows) or data_parallel
    assert all(r.devices_used <= r.devices for r in report.rows)
    assert [r.devices for r in report.rows] == [1, 2, 3, 4, 5, 6]
    t = [r.throughput_samples_per_s for r in report.rows]
    assert all(r.fits for r in report.rows)
    assert all(b >= a * (1 - 1e-9) for a, b in zip(t, t[1:], strict=False)), t
    assert t[-1] > t[0]
    for r in report.rows[1:]:
        assert r.speedup == pytest.approx(r.throughput_samples_per_s / t[0])
        assert r.marginal_gain_per_device is not None and r.marginal_gain_per_device >= 0
        assert r.cost_per_hour == pytest.approx(4.0 * r.devices)
        assert r.samples_per_dollar == pytest.approx(
            r.throughput_samples_per_s * 3600 / r.cost_per_hour
        )


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(1, 10), st.integers(1, 6), st.sampled_from(["weak", "strong"]))
def test_more_identical_devices_never_lower_best_throughput(cache, n, extra, scaling):
    """Independent plans (no carry-over between rows) of n and n + extra devices."""

    def best(k: int) -> float:
        report = whatif(
            GPT,
            homogeneous_cluster(A100, k),
            FAST,
            ShapeBindings(batch=64),
            scaling=scaling,
            default_sweep=False,
            cache=cache,
        )
        return report.rows[0].throughput_samples_per_s

    assert best(n + extra) >= best(n) * (1 - 1e-9)


def test_fits_on_n_then_fits_on_n_plus_one(cache):
    report = whatif(
        GPT,
        one_node([TINY | {"count": 2}]),
        PlanConfig(microbatches=2, strategy="pipedream"),
        ShapeBindings(batch=8),
        adds=["A100-80GB:1,2,3,4,5,6,7"],
        cache=cache,
    )
    fits = [r.fits for r in report.rows]
    assert not fits[0] and fits[-1]
    first = fits.index(True)
    assert all(fits[first:]), fits
    row = report.rows[0]
    assert row.throughput_samples_per_s == 0 and row.speedup is None
    assert "short by" in row.note


def test_min_devices_fits_and_one_fewer_does_not(cache, tmp_path):
    config = PlanConfig(microbatches=2, time_limit_s=10)
    bindings = ShapeBindings(batch=8)
    base = one_node([TINY | {"count": 2}])
    report = whatif(
        GPT, base, config, bindings, min_devices_kind="a100-80gb", default_sweep=False, cache=cache
    )
    assert len(report.rows) == 1
    n = report.min_devices
    assert n is not None and n > 2 and report.min_devices_plan is not None
    assert len(report.min_devices_plan.cluster.device_ids()) == n
    # Checked afresh, without the cache.
    mg, lg = load_model(GPT, bindings)
    spec = base.nodes[0].devices[0]
    p = plan_graph(mg, lg, homogeneous_cluster(spec, n, base), config, bindings)
    assert all(s.peak_memory_bytes <= s.memory_capacity_bytes for s in p.stages)
    with pytest.raises(DoesNotFitError):
        plan_graph(mg, lg, homogeneous_cluster(spec, n - 1, base), config, bindings)


# ------------------------------------------------------------------ cache


def test_second_identical_whatif_is_served_from_the_cache(tmp_path):
    args = (GPT, MIXED, PlanConfig(time_limit_s=10), ShapeBindings(batch=16))
    kw = {"adds": ["A100-80GB:2"], "links": ["IB-NDR"]}
    t0 = time.perf_counter()
    first = whatif(*args, **kw, cache=PlanCache(tmp_path))
    cold = time.perf_counter() - t0
    assert first.cache_misses > 0
    t0 = time.perf_counter()
    second = whatif(*args, **kw, cache=PlanCache(tmp_path))
    warm = time.perf_counter() - t0
    assert second.cache_misses == 0 and second.cache_hits >= first.cache_misses
    assert warm < cold
    assert [r.model_dump() for r in second.rows] == [r.model_dump() for r in first.rows]


def test_cache_keys_cover_the_planner_and_cost_model_source():
    from planner.whatif.cache import code_fingerprint, fingerprinted_sources

    names = {f"{p.parent.name}/{p.name}" for p in fingerprinted_sources()}
    assert {"planner/api.py", "partition/objective.py", "ops/matmul.py", "cost/memory.py"} <= names
    assert len(code_fingerprint()) == 16


def test_cache_ignores_and_rewrites_a_corrupted_file_and_caches_does_not_fit(tmp_path):
    bindings, config = ShapeBindings(batch=8), PlanConfig(microbatches=2, strategy="pipedream")
    mg, lg = load_model(GPT, bindings)
    small = one_node([TINY | {"count": 2}])
    cache = PlanCache(tmp_path)
    with pytest.raises(DoesNotFitError) as first:
        cache.plan(mg, lg, small, config, bindings)
    again = PlanCache(tmp_path)
    with pytest.raises(DoesNotFitError) as second:
        again.plan(mg, lg, small, config, bindings)
    assert again.hits == 1 and str(second.value) == str(first.value)

    c = one_node(["A100-80GB"])
    cache.plan(mg, lg, c, config, bindings)
    path = cache.path_of(plan_key(mg.graph_hash, c, config, bindings))
    path.write_text('{"key": "truncated')
    fresh = PlanCache(tmp_path)
    p = fresh.plan(mg, lg, c, config, bindings)
    assert fresh.misses == 1 and p.stages
    assert json.loads(path.read_text())["fits"] is True  # rewritten
    # The key depends on every input.
    keys = {
        plan_key(mg.graph_hash, c, config, bindings),
        plan_key(mg.graph_hash, c, config, ShapeBindings(batch=16)),
        plan_key(mg.graph_hash, c, config.model_copy(update={"microbatches": 4}), bindings),
        plan_key(mg.graph_hash, one_node(["H100-80GB"]), config, bindings),
        plan_key("other", c, config, bindings),
    }
    assert len(keys) == 5


# ------------------------------------------------------------------ CLI


def pipeplan(*args: str, cache_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runners.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=os.environ | {"PIPEPLAN_CACHE_DIR": str(cache_dir)},
    )


def test_cli_json_and_png(tmp_path):
    png = tmp_path / "w.png"
    r = pipeplan(
        "whatif",
        GPT,
        "--cluster",
        MIXED,
        "--batch",
        "16",
        "--add",
        "A100-80GB:2",
        "--replace",
        "V100-32GB=H100-80GB",
        "--strategy",
        "pipedream",
        "--json",
        "--png",
        str(png),
        cache_dir=tmp_path / "cache",
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    rows = data["rows"]
    assert rows[0]["scenario"] == "base" and rows[0]["devices"] == 6
    assert [row["devices"] for row in rows] == [6, 8, 6]
    assert all(row["throughput_samples_per_s"] > 0 for row in rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pipeplan(
        "whatif",
        GPT,
        "-c",
        MIXED,
        "--batch",
        "16",
        "--strategy",
        "pipedream",
        cache_dir=tmp_path / "cache",
    )
    assert table.returncode == 0, table.stderr
    assert "+4 A100-80GB" in table.stdout and "samples/s" in table.stdout


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--add", "B200:2"], "unknown device 'B200'"),
        (["--add", "A100-80GB"], "malformed --add"),
        (["--add", "A100-80GB:two"], "malformed --add"),
        (["--replace", "V100-32GB"], "malformed --replace"),
        (["--replace", "T4=H100-80GB"], "no T4 in cluster"),
        (["--link", "IB-XDR"], "unknown link preset 'IB-XDR'"),
        (["--min-devices", "Z80"], "unknown device 'Z80'"),
    ],
)
def test_cli_bad_flags_exit_2_with_one_line(tmp_path, flags, fragment):
    r = pipeplan("whatif", GPT, "--cluster", MIXED, *flags, cache_dir=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_bad_scaling_is_a_pipeplan_error():
    with pytest.raises(PipeplanError, match="scaling"):
        whatif(GPT, MIXED, FAST, ShapeBindings(batch=8), scaling="diagonal")
