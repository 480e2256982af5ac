"""Tensor parallelism: sharded stage models, their pricing and `plan --tp`.

The central check: a stage's t rank models (`exporters.shard`), joined by
`emulate_group` (AllReduce a Sum over the ranks, CopyToGroup an Identity) and run by
onnxruntime, compute what the unsharded stage computes (max abs <= 1e-4), on an MLP, on
grouped-query attention with SwiGLU (both exporters), on the gpt sample cut by a real plan.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_model

from cost.cluster import cluster_from_dict
from cost.errors import PipeplanError
from exporters.bundle import export
from exporters.shard import (
    ParamShard,
    emulate_group,
    shard_array,
    shard_stage_model,
    shardable_blocks,
    stage_shards,
    unshard_arrays,
)
from exporters.stages import whole_stage_models
from planner.api import plan, plan_graph
from planner.config import PlanConfig
from planner.graph.inspect import load_model
from planner.graph.load import load_graph
from planner.graph.shapes import ShapeBindings
from planner.graph.sharding import find_blocks

ROOT = Path(__file__).resolve().parents[1]
GPT = ROOT / "samples" / "models" / "gpt.onnx"
CPU4 = ROOT / "samples" / "clusters" / "cpu4_profile.yaml"
TOLERANCE = 1e-4


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options)


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        if i.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            feeds[i.name] = rng.integers(0, 10, size=shape).astype(np.int64)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _worst_difference(ranks: list[onnx.ModelProto], whole: onnx.ModelProto) -> float:
    feeds = _feeds(whole)
    names = [o.name for o in whole.graph.output]
    want = _session(whole).run(names, feeds)
    got = _session(emulate_group(ranks)).run(names, feeds)
    return max(float(np.abs(a - b).max()) for a, b in zip(want, got, strict=True))


def _shard_whole_model(path: Path, t: int, batch: int = 2):
    """The whole model as one stage: its t rank models and the model with bound shapes."""
    mg = load_graph(path, ShapeBindings(batch=batch))
    load_external_data_for_model(mg.model, str(path.parent))
    shards = stage_shards(mg, shardable_blocks(mg, t), list(mg.op_nodes), 0)
    ranks = [shard_stage_model(mg.model, mg, shards, t, k, numpy_helper.to_array) for k in range(t)]
    whole = onnx.ModelProto()
    whole.CopyFrom(mg.model)
    for i in whole.graph.input:  # the shapes the rank models were written for
        for dim, size in zip(i.type.tensor_type.shape.dim, mg.tensors[i.name].shape, strict=True):
            dim.dim_value = size
    return mg, shards, ranks, whole


class GroupedQueryBlock(torch.nn.Module):
    """A Llama-style layer: RMS-free LayerNorm, 4 query heads over 2 KV heads (repeat_kv),
    causal softmax attention, then a SwiGLU MLP."""

    def __init__(self, d: int = 32, heads: int = 4, kv_heads: int = 2, hidden: int = 64):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, d // heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.q = torch.nn.Linear(d, d, bias=False)
        self.k = torch.nn.Linear(d, kv_heads * self.hd, bias=False)
        self.v = torch.nn.Linear(d, kv_heads * self.hd, bias=False)
        self.o = torch.nn.Linear(d, d, bias=False)
        self.gate = torch.nn.Linear(d, hidden, bias=False)
        self.up = torch.nn.Linear(d, hidden, bias=False)
        self.down = torch.nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        b, s, d = x.shape
        h = self.norm1(x)
        q = self.q(h).view(b, s, self.heads, self.hd).transpose(1, 2)
        k = self.k(h).view(b, s, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v(h).view(b, s, self.kv_heads, self.hd).transpose(1, 2)
        groups = self.heads // self.kv_heads
        k = (
            k[:, :, None]
            .expand(b, self.kv_heads, groups, s, self.hd)
            .reshape(b, self.heads, s, self.hd)
        )
        v = (
            v[:, :, None]
            .expand(b, self.kv_heads, groups, s, self.hd)
            .reshape(b, self.heads, s, self.hd)
        )
        scores = q @ k.transpose(-1, -2) / self.hd**0.5
        mask = torch.triu(torch.ones(s, s, dtype=torch.bool), 1)
        att = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, s, d)
        x = x + self.o(y)
        h = self.norm2(x)
        return x + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h))


def _export(module: torch.nn.Module, example, path: Path, dynamo: bool) -> Path:
    torch.manual_seed(0)
    kwargs = {"dynamo": dynamo, "input_names": ["x"], "output_names": ["y"]}
    if dynamo:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=64)},)
    else:
        kwargs["dynamic_axes"] = {"x": {0: "batch"}}
    torch.onnx.export(module.eval(), example, str(path), **kwargs)
    return path


# ----------------------------------------------------------------- sharded models


def test_parameter_shards_join_back_with_fused_parts():
    a = np.arange(4 * 12, dtype=np.float32).reshape(4, 12)
    spec = ParamShard(axis=1, parts=(4, 4, 4))  # a fused QKV: each part split on its own
    pieces = [shard_array(a, spec, 2, k) for k in range(2)]
    assert pieces[0].shape == (4, 6)
    assert np.array_equal(pieces[0][:, :2], a[:, 0:2]) and np.array_equal(
        pieces[0][:, 2:4], a[:, 4:6]
    )
    assert np.array_equal(unshard_arrays(pieces, spec), a)


@pytest.mark.parametrize("t", [2, 4])
def test_sharded_mlp_reproduces_the_unsharded_one(tmp_path, t):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16), torch.nn.LayerNorm(16)
    )
    path = _export(model, (torch.randn(4, 16),), tmp_path / "mlp.onnx", dynamo=False)
    mg, shards, ranks, whole = _shard_whole_model(path, t)
    assert len(shards.blocks) == 1 and len(shards.params) == 3  # up W, up b, down W
    assert _worst_difference(ranks, whole) <= TOLERANCE
    for r in ranks:  # the domain is declared, the checker passes, weights are 1/t
        onnx.checker.check_model(r, full_check=True)
        assert any(o.domain == "pipeplan" for o in r.opset_import)
    sizes = {i.name: list(i.dims) for i in ranks[0].graph.initializer}
    assert [64 // t, 16] in sizes.values() or [16, 64 // t] in sizes.values()


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_sharded_grouped_query_attention_and_swiglu(tmp_path, dynamo):
    path = _export(
        GroupedQueryBlock(), (torch.randn(2, 8, 32),), tmp_path / "gqa.onnx", dynamo=dynamo
    )
    mg, shards, ranks, whole = _shard_whole_model(path, 2)
    assert sorted(b.kind for b in shards.blocks) == ["attention", "mlp"]
    assert _worst_difference(ranks, whole) <= TOLERANCE
    # 2 KV heads do not split 4 ways: the attention block is left whole, the MLP still splits
    assert [b.kind for b in shardable_blocks(mg, 4)] == ["mlp"]


class TinyLM(torch.nn.Module):
    """Embedding, norm and an untied LM head."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(32, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.head = torch.nn.Linear(16, 64, bias=False)

    def forward(self, ids):
        return self.head(self.norm(self.embed(ids)))


def test_a_head_split_over_the_vocabulary_is_gathered(tmp_path):
    """An untied LM head: each rank computes its slice of the logits, AllGather joins them."""
    path = _export(
        TinyLM(),
        (torch.zeros(2, 8, dtype=torch.int64),),
        tmp_path / "lm.onnx",
        dynamo=False,
    )
    mg, shards, ranks, whole = _shard_whole_model(path, 4)
    assert [b.kind for b in shards.blocks] == ["vocabulary"]
    assert any(n.op_type == "AllGather" for n in ranks[0].graph.node)
    assert _worst_difference(ranks, whole) <= TOLERANCE


def test_a_head_tied_to_the_embedding_is_reported_not_split():
    """The gpt sample ties its head to the embedding (the dynamo export keeps the tie): the
    head stays whole, and the plan says why."""
    mg = load_graph(GPT, ShapeBindings(batch=2))
    head = [b for b in find_blocks(mg) if b.kind == "vocabulary"]
    assert (
        len(head) == 1 and "lm_head.weight is also read outside the block (tied" in head[0].problem
    )
    p = plan(
        GPT, CPU4, PlanConfig(tensor_parallel=2, stages=1, data_parallel=1), ShapeBindings(batch=2)
    )
    line = next(x for x in p.explanation if x.startswith("tensor parallel 2:"))
    assert "4 attention and 4 MLP blocks split" in line and "lm_head.weight is also read" in line


def test_gpt_sample_stages_of_a_real_plan_reproduce_the_unsharded_stages(tmp_path):
    p = plan(
        GPT, CPU4, PlanConfig(tensor_parallel=2, stages=2, microbatches=2), ShapeBindings(batch=2)
    )
    assert p.layout.tensor_parallel == 2 and all(len(s.tensor_devices) == 2 for s in p.stages)
    manifest = export(GPT, p, tmp_path / "bundle")
    assert manifest.world_size == 4 and manifest.tensor_parallel == 2
    assert [(e.rank, e.replica, e.tensor_rank, e.device, e.stages) for e in manifest.rank_map] == [
        (0, 0, 0, "n0.0", [0]),
        (1, 0, 1, "n0.1", [0]),
        (2, 0, 0, "n0.2", [1]),
        (3, 0, 1, "n0.3", [1]),
    ]
    mg = load_graph(GPT, ShapeBindings(batch=2))
    wholes = whole_stage_models(mg, p)
    for st, whole in zip(manifest.stages, wholes, strict=True):
        assert [f.file for f in st.tensor_files] == [
            f"stage_{st.index}_tp{k}.onnx" for k in range(2)
        ]
        assert st.sharded_parameters
        ranks = [onnx.load(str(tmp_path / "bundle" / f.file)) for f in st.tensor_files]
        assert _worst_difference(ranks, whole) <= TOLERANCE


# ----------------------------------------------------------------- planning


def _two_nodes(memory_gb: float = 80) -> object:
    return cluster_from_dict(
        {
            "name": "two-nodes",
            "nodes": [
                {
                    "name": f"n{i}",
                    "devices": [{"like": "A100-80GB", "count": 4, "memory_GB": memory_gb}],
                    "link": "NVLink3",
                }
                for i in range(2)
            ],
            "inter_node_link": "IB-HDR",
        }
    )


def _random_cluster(rng: random.Random, i: int):
    kind = rng.choice(["A100-80GB", "H100-80GB", "V100-32GB", "T4"])
    memory = rng.choice([None, 0.006, 0.01])  # GB: tight enough that sharding may be needed
    device = {"like": kind, "count": rng.choice([2, 4, 4, 8])}
    if memory is not None:
        device["memory_GB"] = memory
    nodes = [
        {"name": f"n{n}", "devices": [device], "link": rng.choice(["NVLink3", "PCIe4", "NVLink4"])}
        for n in range(rng.randint(1, 2))
    ]
    return cluster_from_dict(
        {"name": f"r{i}", "nodes": nodes, "inter_node_link": rng.choice(["IB-HDR", "100GbE"])}
    )


@pytest.mark.parametrize("seed", range(6))
def test_auto_is_never_below_a_fixed_degree(seed):
    """On random clusters: auto searches t with replicas and the split, so its closed form
    is at least every --tp N's that plans."""
    rng = random.Random(seed)
    mg, lg = load_model(GPT, ShapeBindings(batch=8))
    cluster = _random_cluster(rng, seed)
    base = PlanConfig(microbatches=rng.choice([2, 4, 8]), dtype=rng.choice(["fp32", "bf16"]))

    def closed_form(config):
        try:
            p = plan_graph(mg, lg, cluster, config, ShapeBindings(batch=8))
        except PipeplanError:  # a degree that does not fit or apply counts as 0
            return 0.0, None
        return next(t for t in p.layouts_tried if t.chosen).throughput_samples_per_s, p

    auto, chosen = closed_form(base)
    fixed = {
        t: closed_form(base.model_copy(update={"tensor_parallel": t}))[0] for t in (1, 2, 4, 8)
    }
    assert all(auto >= f * (1 - 1e-9) for f in fixed.values()), (auto, fixed)
    if chosen is None:  # nothing fits at all: no fixed degree did either (checked above)
        return
    per_node = len(cluster.nodes[0].devices)
    tried = {t.tensor_parallel for t in chosen.layouts_tried}
    assert tried == {t for t in (1, 2, 4, 8) if per_node % t == 0}


def test_tensor_parallel_memory_and_communication_are_priced():
    mg, lg = load_model(GPT, ShapeBindings(batch=8))
    cluster = _two_nodes()
    one = PlanConfig(microbatches=4, data_parallel=1, stages=1)
    p1 = plan_graph(
        mg, lg, cluster, one.model_copy(update={"tensor_parallel": 1}), ShapeBindings(batch=8)
    )
    p2 = plan_graph(
        mg, lg, cluster, one.model_copy(update={"tensor_parallel": 2}), ShapeBindings(batch=8)
    )
    s1, s2 = p1.stages[0], p2.stages[0]
    assert s2.tensor_parallel == 2 and s2.tensor_devices == ["n0.0", "n0.1"]
    assert s2.tensor_comm_ms > 0 and s1.tensor_comm_ms == 0
    # Adam in fp32: 16 bytes per parameter; the sharded ones are held half on each device
    sharded = sum(
        mg.params[p].numel
        for p in {
            q for b in shardable_blocks(mg, 2) for v in b.params for q in mg.weights.sources[v]
        }
    )
    assert s1.params_state_bytes - s2.params_state_bytes == pytest.approx(
        16 * sharded / 2, rel=1e-6
    )
    assert s2.activation_bytes < s1.activation_bytes
    assert p2.layout.tensor_parallel == 2 and p2.layout.devices_used == 2
    assert any(line.startswith("tensor parallel 2:") for line in p2.explanation)


def _cli(*args):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "runners.cli",
            "plan",
            str(GPT),
            "-c",
            str(CPU4),
            "--batch",
            "2",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_cli_plan_tp_writes_the_layout(tmp_path):
    out = tmp_path / "plan.json"
    r = _cli("--tp", "2", "--stages", "2", "-m", "2", "-o", str(out))
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["layout"]["tensor_parallel"] == 2
    assert [s["tensor_devices"] for s in data["stages"]] == [["n0.0", "n0.1"], ["n0.2", "n0.3"]]
    assert data["tensor_groups"] == {"n0.0": ["n0.0", "n0.1"], "n0.2": ["n0.2", "n0.3"]}


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--tp", "8"], "tensor parallelism 8 does not divide node n0's 4 devices"),
        (["--tp", "0"], "the tensor-parallel degree must be at least 1"),
        (["--tp", "two"], "bad setting tensor_parallel"),
    ],
)
def test_cli_bad_tp_is_one_line(tmp_path, args, fragment):
    out = tmp_path / "plan.json"
    r = _cli(*args, "-o", str(out))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and fragment in lines[0], r.stderr
    assert not out.exists()


def test_a_degree_nothing_splits_is_an_error_not_a_replicated_plan(tmp_path):
    six = tmp_path / "six.yaml"
    six.write_text(
        "name: six\nnodes:\n  - name: n0\n    devices: 6x A100-80GB\n    link: NVLink3\n"
    )
    out = tmp_path / "plan.json"
    r = subprocess.run(
        [sys.executable, "-m", "runners.cli", "plan", str(GPT), "-c", str(six), "--batch", "2",
         "--tp", "3", "-o", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert (
        "no attention or MLP block of the model splits 3 ways (heads 4 not divisible by 3"
        in lines[0]
    )
    assert not out.exists()
