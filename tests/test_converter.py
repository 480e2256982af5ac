"""runners.onnx_to_torch: ONNX -> torch.fx conversion against onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from runners.onnx_to_torch import convert

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "samples" / "models"


def _ort(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    src = str(model) if isinstance(model, Path | str) else model.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def _sample_feeds(path: Path, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        shape = [batch if not isinstance(d, int) else d for d in i.shape]
        if "int" in i.type:
            feeds[i.name] = rng.integers(0, 100, shape).astype(np.int64)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("name", ["mlp", "gpt", "resnet", "inception"])
def test_samples_match_onnxruntime(name):
    path = MODELS / f"{name}.onnx"
    feeds = _sample_feeds(path)
    gm = convert(path)
    assert gm.input_names == list(feeds)
    with torch.no_grad():
        got = gm(*(torch.from_numpy(v) for v in feeds.values()))
    assert isinstance(got, tuple)
    for g, r in zip(got, _ort(path, feeds), strict=True):
        np.testing.assert_allclose(g.numpy(), r, atol=1e-4, rtol=1e-4)
