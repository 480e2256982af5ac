"""Device catalog, link presets and cluster specs: loading, queries and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cost.cluster import Cluster, cluster_from_dict, load_cluster
from cost.devices import CATALOG, DeviceSpec, resolve_device
from cost.errors import PipeplanError
from cost.links import LOCAL_LINK, PRESETS, LinkSpec, resolve_link

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "clusters"

MIXED = """\
name: mixed
nodes:
  - name: n0
    devices: 4x A100-80GB      # "<count>x <catalog name>", or a list of names or full device specs
    link: NVLink3              # intra-node: a preset name, or {bandwidth_GBps: 300, latency_us: 5} (GB/s, microseconds)
  - name: n1
    devices: 2x V100-32GB
    link: PCIe4
inter_node_link: IB-HDR
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def one_line_error(excinfo: pytest.ExceptionInfo[PipeplanError]) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------ samples and example


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_sample_loads(path: Path) -> None:
    cluster = load_cluster(path)
    assert cluster.num_devices >= 1
    ids = cluster.device_ids()
    for a in ids[:3] + ids[-2:]:
        for b in ids[:3] + ids[-2:]:
            assert cluster.link_between(a, b).transfer_seconds(1 << 20) >= 0


def test_expected_samples_exist() -> None:
    names = {p.stem for p in SAMPLES.glob("*.yaml")}
    assert {"mixed", "a100x4", "h100x16", "h100x64", "cpu2", "hetero"} <= names
    assert load_cluster(SAMPLES / "h100x64.yaml").num_devices == 64
    assert load_cluster(SAMPLES / "h100x16.yaml").num_devices == 16
    hetero = load_cluster(SAMPLES / "hetero.yaml")
    assert len({hetero.device(i).name for i in hetero.device_ids()}) == 3
    cpu2 = load_cluster(SAMPLES / "cpu2.yaml")
    assert cpu2.link_between("n0.0", "n0.1").name == "loopback"


def test_mixed_sample_is_the_documented_example() -> None:
    assert (SAMPLES / "mixed.yaml").read_text() == MIXED


def test_example_loads_as_written(tmp_path: Path) -> None:
    cluster = load_cluster(write(tmp_path, MIXED))
    assert cluster.name == "mixed"
    assert cluster.num_devices == 6
    assert cluster.device_ids() == ["n0.0", "n0.1", "n0.2", "n0.3", "n1.0", "n1.1"]
    assert cluster.link_between("n0.0", "n0.1").name == "NVLink3"
    assert cluster.link_between("n0.0", "n1.0").name == "IB-HDR"
    assert cluster.link_between("n1.0", "n0.0").name == "IB-HDR"
    assert cluster.link_between("n1.0", "n1.1").name == "PCIe4"
    assert cluster.device("n1.1").name == "V100-32GB"
    assert cluster.node_of("n1.1") == "n1"
    assert cluster.summary() == "mixed: 4x A100-80GB + 2x V100-32GB (6 devices, 2 nodes)"


def test_same_device_link_is_free() -> None:
    cluster = load_cluster(SAMPLES / "mixed.yaml")
    assert cluster.link_between("n0.2", "n0.2") is LOCAL_LINK
    assert LOCAL_LINK.transfer_seconds(10**12) == 0.0


def test_json_and_round_trip(tmp_path: Path) -> None:
    cluster = load_cluster(SAMPLES / "mixed.yaml")
    path = write(tmp_path, json.dumps(cluster.model_dump()), "c.json")
    assert load_cluster(path) == cluster
    assert cluster_from_dict(cluster.model_dump()) == cluster


def test_device_forms_and_overrides() -> None:
    cluster = cluster_from_dict(
        {
            "nodes": [
                {
                    "devices": [
                        "1 x a100-80gb",
                        "T4",
                        {"like": "A100-80GB", "memory_GB": 40, "count": 2},
                        {
                            "name": "mine",
                            "peak_tflops": {"fp32": 10},
                            "memory_GB": 12,
                            "bandwidth_GBps": 500,
                        },
                    ],
                    "link": {"bandwidth_GBps": 100, "latency_us": 4},
                },
                {"devices": "2x V100-16GB + L4"},
            ],
            "inter_node_link": {"like": "IB-HDR", "latency_us": 5},
            "overrides": [{"between": ["n1.0", "n0.0"], "link": "100GbE"}],
        }
    )
    assert cluster.num_devices == 8
    assert [n.name for n in cluster.nodes] == ["n0", "n1"]
    assert cluster.device("n0.2").memory_bytes == 40_000_000_000
    assert cluster.device("n0.4").name == "mine"
    assert cluster.link_between("n0.0", "n0.1").bandwidth_GBps == 100
    assert cluster.link_between("n1.0", "n1.1").name == "PCIe4"  # default intra link
    assert cluster.link_between("n0.0", "n1.0").name == "100GbE"  # override, either order
    assert cluster.link_between("n0.1", "n1.0").latency_us == 5
    assert cluster.summary() == (
        "cluster: 1x A100-80GB + 1x T4 + 2x A100-80GB + 1x mine + 2x V100-16GB + 1x L4"
        " (8 devices, 2 nodes)"
    )


def test_devices_shorthand() -> None:
    cluster = cluster_from_dict({"devices": "2x T4", "link": "PCIe5"})
    assert cluster.device_ids() == ["n0.0", "n0.1"]
    assert cluster.link_between("n0.0", "n0.1").name == "PCIe5"
    assert cluster.summary() == "cluster: 2x T4 (2 devices, 1 node)"


def test_unknown_device_id_is_a_clear_error() -> None:
    cluster = load_cluster(SAMPLES / "a100x4.yaml")
    with pytest.raises(PipeplanError, match="unknown device id 'n1.0'"):
        cluster.device("n1.0")
    with pytest.raises(PipeplanError, match="unknown device id"):
        cluster.link_between("n0.0", "n0.9")


# ------------------------------------------------------------------ bad specs


def _mixed_with(old: str, new: str) -> str:
    assert old in MIXED
    return MIXED.replace(old, new)


BAD_SPECS = {
    "negative bandwidth": (
        _mixed_with("link: PCIe4", "link: {bandwidth_GBps: -5, latency_us: 5}"),
        ["nodes[1].link.bandwidth_GBps: must be > 0 (got -5)"],
    ),
    "unknown device": (
        _mixed_with("2x V100-32GB", "2x V100-32G"),
        ["nodes[1].devices", "'V100-32G'", "did you mean V100-32GB"],
    ),
    "unknown link preset": (
        _mixed_with("link: PCIe4", "link: PCIe9"),
        ["nodes[1].link", "'PCIe9'", "did you mean PCIe5"],
    ),
    "missing inter_node_link": (
        _mixed_with("inter_node_link: IB-HDR\n", ""),
        ["inter_node_link: required", "2 nodes"],
    ),
    "duplicate node names": (
        _mixed_with("name: n1", "name: n0"),
        ["nodes: duplicate node name 'n0'"],
    ),
    "empty devices": (
        _mixed_with("devices: 2x V100-32GB", "devices: []"),
        ["nodes[1].devices: at least one device required (got [])"],
    ),
    "malformed count": (
        _mixed_with("4x A100-80GB", "4y A100"),
        ["nodes[0].devices: malformed device entry '4y A100'", "'<count>x <device>'"],
    ),
    "efficiency above one": (
        _mixed_with("link: PCIe4", "link: {like: PCIe4, efficiency: 1.5}"),
        ["nodes[1].link.efficiency: must be in (0, 1] (got 1.5)"],
    ),
    "unknown field": (
        _mixed_with("link: PCIe4", "link: PCIe4\n    linc: 3"),
        ["nodes[1].linc: unknown field"],
    ),
    "no nodes": ("nodes: []\n", ["nodes: at least one node required"]),
    "not a mapping": ("- 4x A100-80GB\n", ["expected a mapping (got list)"]),
    "override with unknown id": (
        MIXED + "overrides:\n  - between: [n0.0, n5.0]\n    link: PCIe5\n",
        ["overrides[0].between: unknown device id 'n5.0'"],
    ),
    "device without fp32": (
        _mixed_with(
            "devices: 2x V100-32GB",
            "devices: [{name: x, peak_tflops: {fp16: 3}, memory_GB: 1, bandwidth_GBps: 1}]",
        ),
        ["nodes[1].devices[0].peak_tflops: an fp32 entry is required"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_spec_is_one_clear_line(tmp_path: Path, case: str) -> None:
    text, fragments = BAD_SPECS[case]
    path = write(tmp_path, text)
    with pytest.raises(PipeplanError) as excinfo:
        load_cluster(path)
    msg = one_line_error(excinfo)
    assert msg.startswith(f"invalid cluster spec {path}: ")
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_several_errors_are_joined_on_one_line(tmp_path: Path) -> None:
    text = _mixed_with("link: PCIe4", "link: {bandwidth_GBps: -5, latency_us: -1}")
    with pytest.raises(PipeplanError) as excinfo:
        load_cluster(write(tmp_path, text))
    msg = one_line_error(excinfo)
    assert "bandwidth_GBps: must be > 0 (got -5); " in msg
    assert "nodes[1].link.latency_us: must be >= 0 (got -1)" in msg


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nnodes:\n  - name: n0\n    devices: [4x A100-80GB\n")
    with pytest.raises(PipeplanError) as excinfo:
        load_cluster(path)
    msg = one_line_error(excinfo)
    assert msg.startswith(f"invalid YAML in {path} line ")


def test_json_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '{"nodes": [\n  {"devices": "T4",}\n]}', "c.json")
    with pytest.raises(PipeplanError, match=r"invalid JSON in .* line 2"):
        load_cluster(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(PipeplanError) as excinfo:
        load_cluster(path)
    assert one_line_error(excinfo) == f"cluster file not found: {path}"


def test_errors_are_exit_code_2() -> None:
    with pytest.raises(PipeplanError) as excinfo:
        cluster_from_dict({"nodes": [{"devices": "4y A100"}]})
    assert excinfo.value.exit_code == 2


# ------------------------------------------------------------------ catalog


def test_catalog_sanity() -> None:
    assert CATALOG["H100-80GB"].peak_flops("fp32") == pytest.approx(67e12)
    assert CATALOG["A100-80GB"].memory_bytes == 80_000_000_000
    for name, dev in CATALOG.items():
        assert dev.name == name
        assert dev.peak_tflops["fp32"] > 0
        assert dev.bandwidth_GBps > 0
        assert dev.memory_GB > 0
        for dtype in ("fp32", "tf32", "fp16", "bf16"):
            assert dev.peak_flops(dtype) > 0
    expected = {
        "V100-16GB",
        "V100-32GB",
        "A100-40GB",
        "A100-80GB",
        "H100-80GB",
        "H100-PCIe",
        "H200",
        "L4",
        "T4",
        "RTX-3090",
        "RTX-4090",
        "GTX-1080",
        "CPU",
    }
    assert expected <= set(CATALOG)


def test_dtype_fallback() -> None:
    v100 = CATALOG["V100-16GB"]
    assert v100.peak_flops("tf32") == v100.peak_flops("fp32")
    assert v100.peak_flops("bf16") == v100.peak_flops("fp16") == pytest.approx(125e12)
    assert CATALOG["GTX-1080"].peak_flops("fp16") == pytest.approx(8.9e12 / 64, rel=0.01)
    assert CATALOG["CPU"].peak_flops("bf16") == CATALOG["CPU"].peak_flops("fp32")
    assert CATALOG["A100-80GB"].peak_flops("bfloat16") == pytest.approx(312e12)
    with pytest.raises(PipeplanError, match="unknown dtype 'fp8'"):
        v100.peak_flops("fp8")


def test_efficiency_curve() -> None:
    dev = CATALOG["A100-80GB"]
    half = dev.half_efficiency_flops
    assert dev.efficiency(half) == pytest.approx(dev.compute_efficiency / 2)
    assert dev.efficiency(1e15) == pytest.approx(dev.compute_efficiency, rel=1e-3)
    assert dev.efficiency(0) == 0


def test_resolve_device() -> None:
    assert resolve_device("a100-80gb") is CATALOG["A100-80GB"]
    assert resolve_device("H100 SXM") is CATALOG["H100-80GB"]
    custom = resolve_device({"like": "A100-80GB", "memory_GB": 40, "peak_tflops": {"fp32": 20}})
    assert custom.memory_GB == 40
    assert custom.peak_tflops["fp16"] == 312  # peak_tflops overrides merge per dtype
    assert custom.peak_tflops["fp32"] == 20
    full = resolve_device(
        {"name": "box", "peak_tflops": {"fp32": 1}, "memory_GB": 2, "bandwidth_GBps": 3}
    )
    assert isinstance(full, DeviceSpec) and full.launch_overhead_us == 5


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("A100-80G", "unknown device 'A100-80G'; did you mean A100-80GB"),
        ({"like": "T4", "memory_GB": -1}, "memory_GB: must be > 0 (got -1)"),
        ({"like": "T4", "compute_efficiency": 0}, "compute_efficiency: must be in (0, 1] (got 0)"),
        ({"like": "Z80"}, "unknown device 'Z80'"),
    ],
)
def test_resolve_device_errors(value, fragment: str) -> None:
    with pytest.raises(PipeplanError) as excinfo:
        resolve_device(value)
    assert fragment in one_line_error(excinfo)


# ------------------------------------------------------------------ links


def test_presets() -> None:
    assert PRESETS["NVLink3"].bandwidth_GBps == 300
    assert PRESETS["NVLink4"].bandwidth_GBps == 450
    assert PRESETS["PCIe4"].bandwidth_GBps == 32
    assert PRESETS["PCIe5"].bandwidth_GBps == 64
    assert PRESETS["IB-HDR"].bandwidth_GBps == 25
    assert PRESETS["IB-NDR"].bandwidth_GBps == 50
    assert PRESETS["100GbE"].bandwidth_GBps == 12.5
    assert "loopback" in PRESETS


def test_transfer_seconds_alpha_beta() -> None:
    link = LinkSpec(bandwidth_GBps=10, latency_us=5, efficiency=0.5)
    assert link.transfer_seconds(0) == 0.0
    # 5 us + 1e9 bytes / (10e9 B/s * 0.5) = 5e-6 + 0.2
    assert link.transfer_seconds(10**9) == pytest.approx(0.2 + 5e-6)
    assert link.transfer_seconds(1) == pytest.approx(5e-6 + 1 / 5e9)
    hdr = PRESETS["IB-HDR"]
    assert hdr.transfer_seconds(25 * 10**9) == pytest.approx(2e-6 + 1 / 0.85)
    with pytest.raises(ValueError):
        link.transfer_seconds(-1)


def test_resolve_link() -> None:
    assert resolve_link("ib-hdr") is PRESETS["IB-HDR"]
    assert resolve_link("nvlink3") is PRESETS["NVLink3"]
    custom = resolve_link({"bandwidth_GBps": 300, "latency_us": 5})
    assert custom.name == "custom" and custom.efficiency == 0.85
    tweaked = resolve_link({"like": "IB-HDR", "latency_us": 5})
    assert (tweaked.bandwidth_GBps, tweaked.latency_us) == (25, 5)
    zero = resolve_link({"bandwidth_GBps": 1, "latency_us": 0})
    assert zero.transfer_seconds(10**9) == pytest.approx(1 / 0.85)
    with pytest.raises(PipeplanError) as excinfo:
        resolve_link("IB-XDR")
    assert "unknown link preset 'IB-XDR'; did you mean" in one_line_error(excinfo)
    with pytest.raises(PipeplanError) as excinfo:
        resolve_link({"bandwidth_GBps": 0, "latency_us": 1})
    assert "bandwidth_GBps: must be > 0 (got 0)" in one_line_error(excinfo)


links = st.builds(
    LinkSpec,
    bandwidth_GBps=st.floats(1e-3, 1e4),
    latency_us=st.floats(0, 1e4),
    efficiency=st.floats(0.01, 1),
)


@given(link=links, a=st.integers(0, 10**13), b=st.integers(0, 10**13))
def test_transfer_time_is_monotone_in_bytes(link: LinkSpec, a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert 0 <= link.transfer_seconds(lo) <= link.transfer_seconds(hi)


def test_models_are_frozen() -> None:
    cluster: Cluster = load_cluster(SAMPLES / "a100x4.yaml")
    with pytest.raises(ValueError):
        cluster.name = "other"  # type: ignore[misc]
    with pytest.raises(ValueError):
        CATALOG["T4"].memory_GB = 1  # type: ignore[misc]
