"""Bad input: one clear `error:` line on stderr, exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import helper

from tests.exporting import export

ROOT = Path(__file__).resolve().parents[1]


def pipeplan(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runners.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
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
def good_model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("good")
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    return export(m, (torch.randn(2, 8),), d / "mlp.onnx", opset=17)


def test_missing_file():
    assert_one_error_line(
        pipeplan("inspect", "no/such/model.onnx"), "model file not found", "no/such/model.onnx"
    )


def test_not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a protobuf\n" * 20)
    assert_one_error_line(pipeplan("inspect", str(path)), "not", str(path))


def test_truncated_file(tmp_path, good_model):
    data = good_model.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    assert_one_error_line(pipeplan("inspect", str(path), "--batch", "2"), str(path))


def test_directory_instead_of_file(tmp_path):
    assert_one_error_line(pipeplan("inspect", str(tmp_path)), "directory")


def test_unbound_symbolic_dimension(good_model):
    assert_one_error_line(
        pipeplan("inspect", str(good_model)), "unbound symbolic dimension 'batch'", "in0", "--batch"
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--dim", "batch"], "expected NAME=VALUE"),
        (["--dim", "batch=0"], "must be positive"),
        (["--input-shape", "in0=2xfoo"], "not an integer"),
        (["--input-shape", "ghost=2x8"], "not a graph input"),
        (["--batch", "-3"], "--batch must be positive"),
    ],
)
def test_bad_bindings(good_model, args, fragment):
    assert_one_error_line(pipeplan("inspect", str(good_model), *args), fragment)


def test_unknown_op_is_a_warning_not_a_crash(tmp_path):
    g = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["h"]),
            helper.make_node("FancyOp", ["h"], ["y"], domain="com.example"),
        ],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 32])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 32])],
    )
    model = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    result = pipeplan("inspect", str(path), "--json")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "com.example.FancyOp" in warnings[0], result.stderr
    assert '"forward_flops"' in result.stdout


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../escape.bin"])
def test_external_data_escaping_the_folder_is_refused(tmp_path, location):
    weight = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[32, 32])
    weight.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(32 * 32 * 4))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 32])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 32])],
        initializer=[weight],
    )
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "escape.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert_one_error_line(pipeplan("inspect", str(path)), "refused", "'w'")


@pytest.mark.parametrize(
    "spec, fragment",
    [
        (
            "nodes:\n  - name: n0\n    devices: 2x A100-80GB\n    link: {bandwidth_GBps: -5, latency_us: 2}\n",
            "bandwidth_GBps: must be > 0 (got -5)",
        ),
        ("nodes:\n  - name: n0\n    devices: 2x A100-80G\n", "unknown device 'A100-80G'"),
        ("nodes:\n  - name: n0\n    devices: 2x A100-80GB\n    link: NVLink9\n", "NVLink9"),
        (
            "nodes:\n  - name: n0\n    devices: 2x A100-80GB\n  - name: n1\n    devices: 1x T4\n",
            "inter_node_link",
        ),
        ("nodes: [\n", "invalid YAML"),
        ("nodes: []\n", "nodes"),
    ],
)
def test_invalid_cluster_specs(tmp_path, spec, fragment):
    path = tmp_path / "cluster.yaml"
    path.write_text(spec)
    assert_one_error_line(pipeplan("cluster", str(path)), fragment)


def test_missing_cluster_file():
    assert_one_error_line(pipeplan("cluster", "no/cluster.yaml"), "cluster file not found")


def test_usage_errors_are_one_line():
    assert_one_error_line(pipeplan("inspect"), "Missing argument")
    assert_one_error_line(pipeplan("frobnicate"), "No such command")


def test_help_is_fast_and_never_imports_torch():
    code = (
        "import sys, time; t=time.perf_counter(); sys.argv=['pipeplan','--help'];\n"
        "from runners.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print(time.perf_counter()-t, file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_inspect_never_imports_torch(good_model):
    code = (
        f"import sys; sys.argv=['pipeplan','inspect',{str(good_model)!r},'--batch','2','--json'];\n"
        "from runners.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
