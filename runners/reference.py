"""`--check`: distributed results against a reference computed in one process.

* Inference: the last stage's outputs against onnxruntime on the whole original model
  (`manifest.model_path`; a missing model is an error, never a silent comparison of the
  stages with themselves). A graph-only source (weights absent, random weights in the
  run) is compared with the stage models chained in onnxruntime, and says so.
* Training: every stage's parameter gradients after one step (every data-parallel
  replica's, after their all-reduce) against one process running the same converted
  stage graphs back to back on the same data, the whole global batch (tied weights: gradients
  summed over the stages holding a copy, as the run's all-reduce does), with the ranks'
  thread count (`OMP_NUM_THREADS`, 1 unless set: a different count changes the order of
  floating-point sums). Relative difference = max |a - b| / scale per tensor, scale =
  max |b| of the tensor, but at least `GRADIENT_FLOOR` of the largest gradient of the
  step: a tensor whose gradient is near zero is judged on the step's scale, not its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from exporters.manifest import Manifest
from runners.data import DataSource, is_classification, loss_of
from runners.report import CheckResult

OUTPUT_TOLERANCE = 1e-4
GRADIENT_TOLERANCE = 1e-4
GRADIENT_FLOOR = 1e-3


@contextmanager
def ranks_threads():
    """Run the reference with the ranks' intra-op thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(int(os.environ.get("OMP_NUM_THREADS", "1") or 1), 1))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load_npz(folder: Path, prefix: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for f in sorted(folder.glob(f"{prefix}_rank*.npz")):
        with np.load(f) as z:
            out.update({k: z[k] for k in z.files})
    return out


def _ort_reference(root: Path, manifest: Manifest) -> Callable[[dict], dict[str, np.ndarray]]:
    """The inference reference as a function of the feeds, its sessions made once: the
    source model, or for a graph-only source the stage models chained."""
    import onnxruntime as ort

    if manifest.weights == "present":
        whole = ort.InferenceSession(str(manifest.source_model(root)))
        names = [o.name for o in whole.get_outputs()]
        return lambda feeds: dict(zip(names, whole.run(None, feeds), strict=True))
    sessions = [(st, ort.InferenceSession(str(root / st.file))) for st in manifest.stages]

    def chained(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        env = dict(feeds)
        for st, session in sessions:
            outs = session.run(
                [o.name for o in st.outputs], {t.name: env[t.name] for t in st.inputs}
            )
            env.update(zip((o.name for o in st.outputs), outs, strict=True))
        return {o.name: env[o.name] for o in manifest.graph_outputs}

    return chained


def check_outputs(
    root: Path,
    manifest: Manifest,
    folder: Path,
    *,
    seed: int,
    data: str | None,
    requests: range | None = None,
) -> CheckResult:
    """The run's outputs of every micro-batch of a step (or of every streamed request,
    `requests`: request r is micro-batch r of step 0) against onnxruntime."""
    reference = _ort_reference(root, manifest)  # a missing source model fails here
    got = _load_npz(folder, "outputs")
    source = DataSource(manifest, root, seed=seed, npz=data)
    batches = requests if requests is not None else range(source.per_step)
    worst_abs = worst_rel = 0.0
    for mb in batches:
        feeds = {k: v.numpy() for k, v in source.inputs(0, mb).items()}
        ref = reference(feeds)
        for o in manifest.graph_outputs:
            a, b = got[f"{mb}/{o.name}"], ref[o.name]
            diff = float(np.abs(a - b).max()) if a.size else 0.0
            worst_abs = max(worst_abs, diff)
            worst_rel = max(worst_rel, diff / max(float(np.abs(b).max()), 1e-12))
    passed = worst_abs <= OUTPUT_TOLERANCE or worst_rel <= OUTPUT_TOLERANCE
    return CheckResult(
        kind="outputs",
        max_abs_diff=worst_abs,
        max_rel_diff=worst_rel,
        tolerance=OUTPUT_TOLERANCE,
        passed=passed,
        detail=f"{len(batches)} {'requests' if requests is not None else 'micro-batches'}"
        " vs onnxruntime on "
        + (
            "the source model"
            if manifest.weights == "present"
            else "the stage models chained (the source has no weights)"
        ),
    )


def reference_gradients(
    root: Path, manifest: Manifest, *, seed: int, data: str | None
) -> dict[str, np.ndarray]:
    """One process, same converted graphs and data: gradients keyed '<stage>/<onnx name>'."""
    modules = _whole_stages(root, manifest, seed)
    source = DataSource(manifest, root, seed=seed, npz=data)
    m = source.per_step  # the global batch: every replica's micro-batches
    for mb in range(m):
        env: dict[str, torch.Tensor] = dict(source.inputs(0, mb))
        loss = torch.zeros(())
        for st in manifest.stages:
            outs = modules[st.index](*[env[t.name] for t in st.inputs])
            env.update(zip((o.name for o in st.outputs), outs, strict=True))
        for o in manifest.graph_outputs:
            loss = loss + loss_of(env[o.name], source.targets(o, 0, mb), is_classification(o)) / m
        loss.backward()
    grads: dict[str, np.ndarray] = {}
    for st in manifest.stages:
        module = modules[st.index]
        named = dict(module.named_parameters())
        for onnx_name, attr in module.param_names.items():
            p = named.get(attr)
            if p is not None and p.grad is not None:
                grads[f"{st.index}/{onnx_name}"] = p.grad.detach().numpy()
    for w in manifest.shared_weights:
        keys = [f"{s}/{w.name}" for s in w.stages if f"{s}/{w.name}" in grads]
        total = sum(grads[k] for k in keys)
        for k in keys:
            grads[k] = total
    return grads


def _whole_stages(root: Path, manifest: Manifest, seed: int) -> dict[int, torch.nn.Module]:
    """The stages as one process runs them: the bundle's stage files, or for a
    tensor-parallel bundle the unsharded stages cut again from the source model."""
    from runners.onnx_to_torch import convert

    if manifest.tensor_parallel == 1:
        return {st.index: convert(str(root / st.file), seed=seed) for st in manifest.stages}
    from onnx.external_data_helper import load_external_data_for_model

    from exporters.stages import whole_stage_models
    from planner.graph.load import load_graph
    from planner.plan_file import load_plan, plan_bindings

    source = manifest.source_model(root)
    plan = load_plan(root / "plan.json")
    mg = load_graph(source, plan_bindings(plan), keep_merged_weights=plan.model.keep_merged_weights)
    modules = {}
    for st, proto in zip(manifest.stages, whole_stage_models(mg, plan), strict=True):
        load_external_data_for_model(proto, str(source.parent))
        modules[st.index] = convert(proto, seed=seed)
    return modules


def compare_gradients(
    got: dict[str, np.ndarray], ref: dict[str, np.ndarray]
) -> tuple[float, float, list[str]]:
    """Worst absolute and relative difference (module docstring's scale) over the tensors
    both sides have, and the keys only one side has."""
    missing = sorted(set(ref) ^ set(got))
    largest = max((float(np.abs(b).max()) for b in ref.values() if b.size), default=0.0)
    worst_abs = worst_rel = 0.0
    for key in set(ref) & set(got):
        a, b = got[key], ref[key]
        diff = float(np.abs(a - b).max()) if a.size else 0.0
        scale = max(float(np.abs(b).max()) if b.size else 0.0, GRADIENT_FLOOR * largest, 1e-30)
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / scale)
    return worst_abs, worst_rel, missing


def _replica_gradients(folder: Path, manifest: Manifest) -> list[dict[str, np.ndarray]]:
    """Each replica's gradients (after its all-reduce), keyed '<stage>/<onnx name>'; with
    tensor parallelism one dict per (replica, tensor rank): a sharded parameter's pieces
    joined (`exporters.shard.unshard_arrays`), the others as that rank has them."""
    p, t = len(manifest.pipeline_devices), manifest.tensor_parallel
    out: list[dict[str, np.ndarray]] = [{} for _ in range(manifest.data_parallel * t)]
    for f in sorted(folder.glob("grads_rank*.npz")):
        rank = int(f.stem.removeprefix("grads_rank"))
        replica, k = divmod(rank, p * t)[0], rank % t
        with np.load(f) as z:
            out[replica * t + k].update({key: z[key] for key in z.files})
    if t == 1:
        return out
    from exporters.shard import ParamShard, unshard_arrays

    for replica in range(manifest.data_parallel):
        group = out[replica * t : (replica + 1) * t]
        for st in manifest.stages:
            for name, spec in st.sharded_parameters.items():
                key = f"{st.index}/{name}"
                if all(key in g for g in group):
                    whole = unshard_arrays(
                        [g[key] for g in group], ParamShard(spec.axis, tuple(spec.parts))
                    )
                    for g in group:
                        g[key] = whole
    return out


def check_gradients(
    root: Path, manifest: Manifest, folder: Path, *, seed: int, data: str | None
) -> CheckResult:
    with ranks_threads():
        ref = reference_gradients(root, manifest, seed=seed, data=data)
    worst_abs = worst_rel = 0.0
    missing: list[str] = []
    for got in _replica_gradients(folder, manifest):
        a, r, miss = compare_gradients(got, ref)
        worst_abs, worst_rel = max(worst_abs, a), max(worst_rel, r)
        missing = missing or miss
    passed = not missing and worst_rel <= GRADIENT_TOLERANCE
    detail = f"{len(ref)} gradient tensors vs one process"
    if manifest.data_parallel > 1:
        detail += (
            f" over the global batch ({manifest.data_parallel} replicas x "
            f"{manifest.microbatches} micro-batches), every replica compared"
        )
    if missing:
        detail += f"; present on one side only: {', '.join(missing[:3])}"
    return CheckResult(
        kind="gradients",
        max_abs_diff=worst_abs,
        max_rel_diff=worst_rel,
        tolerance=GRADIENT_TOLERANCE,
        passed=passed,
        detail=detail,
    )
