"""Calibration: `pipeplan calibrate --quick` profiles, clusters of profiled devices, measured
op times in plans, one-line errors, and the planning path staying torch-free."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from cost.cluster import load_cluster
from cost.errors import PipeplanError
from cost.profile import Profile, load_profile, measured_op, profile_from_dict

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "samples" / "models" / "mlp.onnx"
GPT = ROOT / "samples" / "models" / "gpt.onnx"


def pipeplan(
    *args: str, env: dict | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "runners.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def assert_one_error_line(result, *fragments: str, code: int = 2) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory) -> Path:
    """One quick calibration through the CLI (with the link and the MLP's operators)."""
    out = tmp_path_factory.mktemp("calibration") / "cpu.yaml"
    result = pipeplan("calibrate", "--quick", "--model", str(MLP), "--batch", "4", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.exists()
    # the summary prints each calibrated model's leave-one-out error (runners.calibrate.in_model)
    assert "held-out model error" in result.stdout and "mlp" in result.stdout
    return out


def write_cluster(folder: Path, profile: str, name: str = "c.yaml", extra: str = "") -> Path:
    path = folder / name
    path.write_text(
        textwrap.dedent(
            f"""\
            name: measured
            nodes:
              - name: n0
                devices: [{{profile: {profile}, count: 2{extra}}}]
                link: {{profile: {profile}}}
            """
        )
    )
    return path


# ------------------------------------------------------------------ the profile


def test_quick_profile_is_valid(profile_path: Path) -> None:
    text = profile_path.read_text()
    assert text.startswith("# pipeplan calibration profile")
    profile = profile_from_dict(yaml.safe_load(text), str(profile_path))
    d = profile.device
    assert d.peak_tflops["fp32"] > 0 and all(v > 0 for v in d.peak_tflops.values())
    assert d.memory_GB > 0 and d.bandwidth_GBps > 0 and d.launch_overhead_us > 0
    assert d.half_efficiency_flops > 0
    for eff in (d.compute_efficiency, d.memory_efficiency):
        assert 0 < eff <= 1
    assert profile.link is not None
    assert profile.link.bandwidth_GBps > 0 and profile.link.latency_us >= 0
    assert profile.link.efficiency == 1.0
    assert profile.threads == 1  # OMP_NUM_THREADS=1
    assert profile.torch_version and profile.created
    assert profile.machine["cpus"] >= 1
    # every operator family was swept and fitted (runners.calibrate.families)
    from runners.calibrate.families import SWEPT

    assert set(profile.families) == set(SWEPT)
    for fit in profile.families.values():
        assert fit.points >= 3 and fit.forward.seconds(1e6, 1e6) > 0
    # every operator of the MLP was timed, forward and backward, at fp32
    from planner.graph.load import load_graph
    from planner.graph.shapes import ShapeBindings

    mg = load_graph(MLP, ShapeBindings(batch=4))
    sigs = {d["signature"] for _, d in mg.graph.nodes(data=True) if not d["folded"]}
    assert sigs <= set(profile.ops)
    assert all(
        t.forward_s >= 0 and t.backward_s >= 0 and t.dtype == "fp32" for t in profile.ops.values()
    )
    gemms = [t for t in profile.ops.values() if t.op_type == "Gemm"]
    assert gemms and all(t.forward_s > 0 for t in gemms)
    report = profile.models["mlp.onnx batch=4"]
    assert report["timed_operators"] == report["operators"] == len(mg.op_nodes)
    # the calibrator's own networks were timed whole: the in-model factor over all three
    # models, each held out once (no probe: whole-model ratios)
    from runners.calibrate.networks import NETWORKS

    keys = {f"{name}.onnx batch={batch}" for name, batch in NETWORKS.items()}
    assert keys < set(profile.models)
    fit = profile.in_model
    assert (
        fit is not None and fit.source == "whole" and set(fit.models) == keys | {"mlp.onnx batch=4"}
    )
    assert fit.forward_node_us >= 0 and fit.backward_node_us >= 0
    assert set(fit.held_out_error) == set(fit.models)
    assert all(profile.models[k]["alone_forward_s"] > 0 for k in fit.models)
    # raw points are kept
    assert profile.measurements["gemm_fp32"] and profile.measurements["pingpong"]


def test_fit_line_relative_recovers_a_line() -> None:
    from runners.calibrate.fits import fit_line_relative

    x = np.array([1e5, 1e6, 1e7, 1e8, 1e9])
    t = 3e-6 + x / 9e10
    a, b = fit_line_relative(x, t)
    assert a == pytest.approx(3e-6, rel=1e-6)
    assert 1 / b == pytest.approx(9e10, rel=1e-6)
    a, b = fit_line_relative(x, x / 5e10)  # through the origin
    assert a == pytest.approx(0, abs=1e-12) and 1 / b == pytest.approx(5e10, rel=1e-6)


def test_extend_times_only_new_operators(profile_path: Path) -> None:
    from planner.graph.shapes import ShapeBindings
    from runners.calibrate import ModelRequest, calibrate

    base = load_profile(profile_path)
    ext = calibrate(
        models=[ModelRequest(str(GPT), ShapeBindings(batch=1))],
        quick=True,
        extend=base,
        context=False,
    )
    assert ext.device == base.device and ext.link == base.link
    assert set(base.ops) < set(ext.ops)
    for sig, timing in base.ops.items():
        assert ext.ops[sig] == timing
    assert any(t.model == "gpt.onnx" and t.op_type == "MatMul" for t in ext.ops.values())


# ------------------------------------------------------------------ clusters and plans


def test_cluster_of_profiled_devices(profile_path: Path, tmp_path: Path) -> None:
    profile = load_profile(profile_path)
    (tmp_path / "p.yaml").write_text(profile_path.read_text())
    cluster = load_cluster(write_cluster(tmp_path, "p.yaml"))  # relative to the cluster file
    assert cluster.num_devices == 2
    dev = cluster.device("n0.0")
    assert dev.profile == str(tmp_path / "p.yaml")
    for field in ("peak_tflops", "memory_GB", "bandwidth_GBps", "launch_overhead_us"):
        assert getattr(dev, field) == getattr(profile.device, field)
    link = cluster.link_between("n0.0", "n0.1")
    assert link.bandwidth_GBps == profile.link.bandwidth_GBps
    assert link.latency_us == profile.link.latency_us and link.efficiency == 1.0
    # overrides apply over the measured figures; a profile file alone is a one-device cluster
    small = load_cluster(write_cluster(tmp_path, "p.yaml", "c2.yaml", ", memory_GB: 0.5"))
    assert small.device("n0.1").memory_GB == 0.5
    assert small.device("n0.1").peak_tflops == profile.device.peak_tflops
    assert load_cluster(tmp_path / "p.yaml").num_devices == 1
    # a re-calibration changes the spec (plan caches key on it), even with equal figures
    digest = dev.profile_sha256
    assert digest and len(digest) == 16
    (tmp_path / "p.yaml").write_text(profile_path.read_text() + "# again\n")
    again = load_cluster(write_cluster(tmp_path, "p.yaml")).device("n0.0")
    assert again.profile_sha256 != digest and again.peak_tflops == dev.peak_tflops
    # the existing forms keep working next to it
    mixed = tmp_path / "m.yaml"
    mixed.write_text(
        "devices: [1x CPU, {profile: p.yaml}, {like: CPU, memory_GB: 4}]\nlink: loopback\n"
    )
    assert [d.name for d in (load_cluster(mixed).device(f"n0.{i}") for i in range(3))][0] == "CPU"


def test_plan_uses_measured_op_times(profile_path: Path, tmp_path: Path) -> None:
    from planner.api import plan
    from planner.config import PlanConfig
    from planner.graph.inspect import load_model
    from planner.graph.shapes import ShapeBindings
    from planner.partition.problem import build_problem

    profile = load_profile(profile_path)
    cluster = load_cluster(write_cluster(tmp_path, str(profile_path)))
    bindings = ShapeBindings(batch=4)
    mg, lg = load_model(MLP, bindings)
    problem = build_problem(mg, lg, cluster, PlanConfig(stages=2))
    assert len(problem.groups) == 1
    for layer, cost in zip(lg.layers, problem.layers, strict=True):
        sigs = [mg.graph.nodes[n]["signature"] for n in layer.nodes]
        assert cost.forward_s[0] == pytest.approx(sum(profile.ops[s].forward_s for s in sigs))
        assert cost.backward_s[0] == pytest.approx(sum(profile.ops[s].backward_s for s in sigs))
    p = plan(MLP, cluster, PlanConfig(stages=2, microbatches=4), bindings)
    for stage in p.stages:
        sigs = [mg.graph.nodes[n]["signature"] for n in stage.nodes]
        assert stage.forward_ms == pytest.approx(1e3 * sum(profile.ops[s].forward_s for s in sigs))
    # at another dtype the measured fp32 times do not apply: roofline with the fitted figures
    sig = next(iter(profile.ops))
    assert measured_op(str(profile_path), sig, "fp32") is not None
    assert measured_op(str(profile_path), sig, "bf16") is None
    assert measured_op(str(tmp_path / "gone.yaml"), sig, "fp32") is None


def test_planning_with_a_profile_stays_torch_free(profile_path: Path, tmp_path: Path) -> None:
    cluster = write_cluster(tmp_path, str(profile_path))
    code = textwrap.dedent(
        f"""
        import sys
        from planner.api import plan
        from planner.config import PlanConfig
        from planner.graph.shapes import ShapeBindings
        p = plan({str(MLP)!r}, {str(cluster)!r}, PlanConfig(stages=2), ShapeBindings(batch=4))
        assert p.stages[0].device_kind.endswith("measured)"), p.stages[0].device_kind
        assert "torch" not in sys.modules, "planning imported torch"
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------ errors


def test_missing_profile_is_one_line_error(tmp_path: Path) -> None:
    cluster = write_cluster(tmp_path, "nowhere.yaml")
    assert_one_error_line(
        pipeplan("cluster", str(cluster)), "profile file not found", "nowhere.yaml"
    )
    assert_one_error_line(
        pipeplan("plan", str(MLP), "--cluster", str(cluster), "--batch", "2"),
        "profile file not found",
    )
    with pytest.raises(PipeplanError, match="nodes\\[0\\].devices: profile file not found"):
        load_cluster(cluster)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("device: [unclosed\n", "invalid YAML in profile"),
        ("device: {name: x}\n", "invalid profile"),
        ("schema_version: 9\ndevice: {name: x}\n", "schema_version 9"),
    ],
)
def test_bad_profile_is_one_line_error(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    cluster = write_cluster(tmp_path, "bad.yaml")
    assert_one_error_line(pipeplan("cluster", str(cluster)), fragment)


def test_profile_without_link(profile_path: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(profile_path.read_text())
    del data["link"]
    (tmp_path / "nolink.yaml").write_text(yaml.safe_dump(data))
    assert isinstance(load_profile(tmp_path / "nolink.yaml"), Profile)
    assert_one_error_line(
        pipeplan("cluster", str(write_cluster(tmp_path, "nolink.yaml"))), "has no measured link"
    )


def test_calibrate_cli_errors(tmp_path: Path) -> None:
    assert_one_error_line(
        pipeplan("calibrate", "--quick", "-o", str(tmp_path / "no" / "p.yaml")),
        "output folder does not exist",
    )
    assert_one_error_line(
        pipeplan("calibrate", "--quick", "--batch", "2", "-o", str(tmp_path / "p.yaml")),
        "need --model",
    )
    assert_one_error_line(
        pipeplan("calibrate", "--quick", "--model", "nope.onnx", "-o", str(tmp_path / "p.yaml")),
        "model file not found",
    )
    assert_one_error_line(
        pipeplan("calibrate", "--quick", "--device", "tpu", "-o", str(tmp_path / "p.yaml")),
        "--device must be cpu or cuda",
    )
    assert not (tmp_path / "p.yaml").exists()


# ------------------------------------------------------------------ signatures


def test_signatures_are_stable_and_shared() -> None:
    from planner.graph.load import load_graph
    from planner.graph.shapes import ShapeBindings

    a = load_graph(GPT, ShapeBindings(batch=2))
    b = load_graph(GPT, ShapeBindings(batch=2))
    sig_a = {n: d["signature"] for n, d in a.graph.nodes(data=True)}
    assert sig_a == {n: d["signature"] for n, d in b.graph.nodes(data=True)}
    ops = [d for _, d in a.graph.nodes(data=True) if not d["folded"]]
    # the four transformer blocks are alike: far fewer signatures than operators
    assert len({d["signature"] for d in ops}) < len(ops) / 3
    first_matmul = next(d for d in ops if d["op_type"] == "MatMul" and "w" in d["input_roles"])
    assert first_matmul["signature"].startswith("MatMul||float[2,")
    c = load_graph(GPT, ShapeBindings(batch=3))  # other shapes, other signatures
    sig_c = {d["signature"] for _, d in c.graph.nodes(data=True) if d["op_type"] == "MatMul"}
    assert not sig_c & {d["signature"] for d in ops if d["op_type"] == "MatMul"}


# ------------------------------------------------------------------ optimizer, sends, probe


def test_quick_profile_fits_the_optimizer_and_send_blocking(profile_path: Path) -> None:
    profile = load_profile(profile_path)
    assert set(profile.optimizer) == {"sgd", "momentum", "adam"}
    for fit in profile.optimizer.values():
        assert fit.per_tensor_us >= 0 and fit.per_param_ns >= 0
        assert fit.per_tensor_us + fit.per_param_ns > 0
    points = [p for p in profile.measurements["optimizer"] if p["optimizer"] == "adam"]
    assert len(points) == 3 and all(p["seconds"] > 0 for p in points)
    # the link knows how long isend holds its caller, and a cluster link carries it over
    assert profile.link.send_blocking_us >= 0
    assert profile.link.send_blocking_GBps is None or profile.link.send_blocking_GBps > 0
    assert "send_blocking" in profile.fit["link"]


def test_fit_optimizer_recovers_known_coefficients() -> None:
    from runners.calibrate.fits import fit_optimizer

    points = [
        {"optimizer": "adam", "tensors": t, "numel": n, "seconds": t * 20e-6 + t * n * 1.5e-9}
        for t, n in ((2, 1 << 20), (8, 1 << 18), (32, 1 << 14), (128, 1 << 10))
    ]
    fits, report = fit_optimizer(points)
    assert fits["adam"].per_tensor_us == pytest.approx(20.0, rel=1e-3)
    assert fits["adam"].per_param_ns == pytest.approx(1.5, rel=1e-3)
    assert report["adam"]["mape_percent"] < 0.01


def test_plan_prices_the_measured_optimizer_step(profile_path: Path, tmp_path: Path) -> None:
    from cost.optimizer import optimizer_step_seconds
    from planner.api import plan
    from planner.config import PlanConfig
    from planner.graph.shapes import ShapeBindings

    cluster = write_cluster(tmp_path, str(profile_path))
    p = plan(MLP, cluster, PlanConfig(stages=2, optimizer="adam"), ShapeBindings(batch=4))
    fit = load_profile(profile_path).optimizer["adam"]
    for st in p.stages:
        assert st.optimizer_ms > 0
        # at least the per-parameter part of the stage's weights (fp32: 4 bytes each)
        assert st.optimizer_ms >= 0.999 * st.param_bytes / 4 * fit.per_param_ns * 1e-6
    device = load_cluster(cluster).device(p.stages[0].device)
    assert optimizer_step_seconds(device, 1000, 2, "adam") == pytest.approx(
        2 * fit.per_tensor_us * 1e-6 + 1000 * fit.per_param_ns * 1e-9
    )
    tails = {t.device: t.optimizer_ms for t in p.simulation.per_device}
    assert sum(tails.values()) == pytest.approx(sum(st.optimizer_ms for st in p.stages))


def test_context_factors_solve_for_the_owned_part() -> None:
    from runners.calibrate.probe import FACTOR_RANGE, context_factors

    stages = [
        {
            "nodes": ["a", "b"],
            "predicted_forward_s": 3.0,
            "predicted_backward_s": 6.0,
            "measured_forward_s": 5.0,
            "measured_backward_s": 6.0,
        },
        {
            "nodes": ["c"],
            "predicted_forward_s": 1.0,
            "predicted_backward_s": 2.0,
            "measured_forward_s": 2.0,
            "measured_backward_s": 2.0,
        },
    ]
    # owned: a (1, 2) and c (1, 2); b's time (2 fwd, 4 bwd) is priced otherwise
    owned = {"a": (1.0, 2.0), "c": (1.0, 2.0)}
    f = context_factors(stages, owned)
    assert f["forward_factor"] == pytest.approx((7.0 - 2.0) / 2.0)  # 7 = f * 2 + 2
    assert f["backward_factor"] == pytest.approx((8.0 - 4.0) / 4.0)
    wild = context_factors([dict(stages[1], measured_forward_s=100.0)], {"c": (1.0, 2.0)})
    assert wild["forward_factor"] == FACTOR_RANGE[1]
    assert context_factors(stages, {})["forward_factor"] == 1.0


def test_latency_fit_recovers_the_latency_that_made_the_iterations() -> None:
    from cost.links import LinkSpec
    from planner.api import plan
    from planner.config import PlanConfig
    from planner.graph.shapes import ShapeBindings
    from runners.calibrate.probe import fit_pipeline_latency, replay_iteration, replay_record

    p = plan(
        MLP,
        ROOT / "samples" / "clusters" / "cpu2.yaml",
        PlanConfig(stages=2, schedule="1f1b", microbatches=8, strategy="params"),
        ShapeBindings(batch=64),
    )
    probe = {
        "plan": p,
        "stages": [
            {
                "stage": st.index,
                "measured_forward_s": 1e-3,
                "measured_backward_s": 2e-3 + 1e-4 * st.index,
            }
            for st in p.stages
        ],
        "measured_iteration_s": 0.0,
    }
    record = replay_record(probe)
    link = LinkSpec(name="x", bandwidth_GBps=3.0, latency_us=100.0, efficiency=1.0)
    truth = link.model_copy(update={"latency_us": 1500.0})
    record["measured_iteration_s"] = replay_iteration(record, truth)
    assert record["measured_iteration_s"] > replay_iteration(record, link)
    latency_s, report = fit_pipeline_latency([record], link)
    assert latency_s * 1e6 == pytest.approx(1500.0, rel=0.02)
    assert report["mean_error_percent"] < 0.5
    assert report["mean_error_percent_at_ping_pong_latency"] > report["mean_error_percent"]


@pytest.mark.slow
def test_calibrate_with_a_pipeline_probe(tmp_path: Path) -> None:
    """A real probe: plan, export and a 2-process run of the MLP under calibration."""
    out = tmp_path / "probe.yaml"
    result = pipeplan(
        "calibrate",
        "--quick",
        "--model",
        str(MLP),
        "--batch",
        "16",
        "--pipeline",
        "2",
        "--no-networks",
        "-o",
        str(out),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    profile = load_profile(out)
    (report,) = profile.models.values()
    probe = report["pipeline"]
    assert "error" not in probe, probe
    lo, hi = 0.25, 4.0
    assert lo <= probe["forward_factor"] <= hi and lo <= probe["backward_factor"] <= hi
    assert len(probe["per_stage_ms"]) == 2
    assert all(st["measured_forward_ms"] > 0 for st in probe["per_stage_ms"])
    assert probe["measured_iteration_ms"] > 0 and probe["replay"]["schedule"]["stages"] == 2
    fit = profile.fit["link"]["pipeline"]
    assert fit["probes"] == 1
    assert profile.link.latency_us == pytest.approx(fit["latency_us"], rel=1e-3)
    assert fit["latency_us"] >= fit["ping_pong_latency_us"] * 0.999
    # the operators the calibration owns were scaled by the factors
    for op in profile.ops.values():
        if op.isolated_forward_s:
            assert op.forward_s >= op.isolated_forward_s * lo
    assert (
        pipeplan(
            "calibrate", "--quick", "--pipeline", "1", "-o", str(tmp_path / "x.yaml")
        ).returncode
        == 2
    )


def test_send_blocking_fit_on_probe_sends() -> None:
    from runners.calibrate.probe import fit_send_blocking

    def t(n, k):
        return k * 50e-6 + n / 2e9

    records = [
        {"sends": [[n, k, t(n, k)] for n, k in ((65536, 1), (1 << 20, 2))]},
        {"sends": [[131072, 1, t(131072, 1)]]},
    ]
    alpha, beta, report = fit_send_blocking(records)
    assert alpha == pytest.approx(50e-6, rel=1e-6) and beta == pytest.approx(2e9, rel=1e-6)
    assert report["mape_percent"] < 1e-6 and len(report["points"]) == 3
    # one size only: a per-tensor figure, no per-byte part
    alpha, beta, _ = fit_send_blocking([{"sends": [[4096, 2, 1e-4], [4096, 2, 3e-4]]}])
    assert beta is None and 50e-6 < alpha < 150e-6
    assert fit_send_blocking([{"sends": []}]) is None
