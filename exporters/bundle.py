"""`export`: model + plan -> a bundle of stage models and a manifest, written atomically.

The bundle is assembled in a temporary folder beside the target and renamed into place at
the end, so a failure at any point leaves no partial bundle behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import onnx

from cost.errors import PipeplanError
from cost.files import current_umask, write_text_atomic
from cost.tensor import dtype_name
from exporters.manifest import (
    Manifest,
    ParameterShard,
    RankEntry,
    Relay,
    ReplicaRanks,
    SharedWeight,
    StageFile,
    TensorRankFile,
    TensorSpec,
)
from exporters.shard import shard_stage_model, shardable_blocks, stage_shards
from exporters.stages import cut_stages, stage_model
from exporters.weights import relocate_weights
from planner.graph.load import ModelGraph, load_graph
from planner.plan_file import Plan, load_plan, plan_bindings


def _spec(mg: ModelGraph, name: str, **extra) -> TensorSpec:
    info = mg.tensors.get(name)
    return TensorSpec(
        name=name,
        shape=list(info.shape) if info is not None and info.shape is not None else None,
        dtype=dtype_name(info.dtype) if info is not None else "unknown",
        **extra,
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export(
    model: str | os.PathLike[str],
    plan: Plan | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    force: bool = False,
) -> Manifest:
    """Write `out_dir/stage_<i>.onnx` for every stage and `out_dir/manifest.json`."""
    if not isinstance(plan, Plan):
        plan = load_plan(plan)
    target = Path(out_dir)
    if target.exists() and not force:
        raise PipeplanError(f"output folder exists: {target} (pass --force to replace it)")
    if not target.parent.exists():
        raise PipeplanError(f"output folder's parent does not exist: {target.parent}")
    mg = load_graph(model, plan_bindings(plan), keep_merged_weights=plan.model.keep_merged_weights)
    if mg.graph_hash != plan.model.graph_hash:
        raise PipeplanError(
            f"the plan was made for another graph (plan hash {plan.model.graph_hash}, model {mg.graph_hash})"
        )
    stages = cut_stages(mg, plan)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        manifest = _write_bundle(mg, plan, stages, tmp, Path(model).parent)
        write_text_atomic(tmp / "manifest.json", manifest.model_dump_json(indent=2))
        write_text_atomic(tmp / "plan.json", plan.model_dump_json(indent=2))
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_bundle(mg: ModelGraph, plan: Plan, stages, out: Path, source_dir: Path) -> Manifest:
    route_sources: dict[tuple[str, int], int] = {}
    route_dests: dict[tuple[str, int], list[int]] = {}
    for r in plan.routing.forward:
        route_sources[(r.tensor, r.dst_stage)] = r.src_stage
        route_dests.setdefault((r.tensor, r.src_stage), []).append(r.dst_stage)
    files = []
    present_all = True
    param_stages: dict[str, list[int]] = {}
    tp = plan.layout.tensor_parallel
    blocks = shardable_blocks(mg, tp) if tp > 1 else []
    if tp > 1 and not mg.has_weights:
        raise PipeplanError(
            "a tensor-parallel bundle needs the model's weights to shard them (this model is "
            "a graph without weight data)"
        )
    for stage, st_plan in zip(stages, plan.stages, strict=True):
        name = f"stage_{stage.index}.onnx"
        data_name = f"{name}.data"
        tensor_files: list[TensorRankFile] = []
        sharded: dict[str, ParameterShard] = {}
        if tp > 1:
            tensor_files, sharded, present = _write_tensor_ranks(
                mg, stage, st_plan, blocks, tp, source_dir, out
            )
            present_all = present_all and present
            name, path = tensor_files[0].file, out / tensor_files[0].file
            data_name = f"{name}.data"
            wrote = tensor_files[0].data_file is not None
        else:
            inits, wrote, present = relocate_weights(stage.initializers, source_dir, out, data_name)
            present_all = present_all and present
            proto = stage_model(mg, stage, inits)
            path = out / name
            onnx.save(proto, str(path))
            _check(path, proto, present)
        params = sorted(
            t.name
            for t in stage.initializers
            if t.name in mg.params and mg.params[t.name].trainable
        )
        for p in params:
            param_stages.setdefault(p, []).append(stage.index)
        outputs = []
        for t in stage.outputs:
            dests = ["graph"] if t in mg.outputs else []
            dests += [f"stage {d}" for d in route_dests.get((t, stage.index), [])]
            outputs.append(_spec(mg, t, destinations=dests))
        files.append(
            StageFile(
                index=stage.index,
                file=name,
                data_file=data_name if wrote or not present else None,
                sha256=_sha256(path),
                device=st_plan.device,
                device_kind=st_plan.device_kind,
                inputs=[
                    _spec(
                        mg,
                        t,
                        source="graph"
                        if t in mg.inputs
                        else f"stage {route_sources[(t, stage.index)]}",
                    )
                    for t in stage.inputs
                ],
                outputs=outputs,
                relays=[
                    Relay(
                        tensor=t,
                        from_stage=a,
                        to_stage=b,
                        shape=_spec(mg, t).shape,
                        dtype=_spec(mg, t).dtype,
                    )
                    for t, a, b in stage.relays
                ],
                parameters=params,
                param_count=sum(mg.params[p].numel for p in params),
                nodes=len(stage.nodes),
                tensor_files=tensor_files,
                sharded_parameters=sharded,
            )
        )
    shared = [SharedWeight(name=p, stages=s) for p, s in sorted(param_stages.items()) if len(s) > 1]
    replicas = replica_ranks(plan)
    files = [
        f.model_copy(update={"ranks": [rep.ranks[f.index] for rep in replicas]}) for f in files
    ]
    try:
        version = metadata.version("pipeplan")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return Manifest(
        pipeplan_version=version,
        model_path=str(mg.path.resolve()),  # absolute: `run --check` from anywhere
        graph_hash=mg.graph_hash,
        microbatch_size=plan.model.microbatch_size,
        microbatches=plan.config.microbatches,
        weights="present" if (present_all and mg.has_weights) else "absent",
        cluster=plan.cluster,
        graph_inputs=[_spec(mg, t, source="graph") for t in mg.inputs],
        graph_outputs=[_spec(mg, t, destinations=["graph"]) for t in mg.outputs],
        stages=files,
        routing=plan.routing,
        shared_weights=shared,
        schedule=plan.schedule,
        plan_config=plan.config.model_dump(),
        data_parallel=plan.layout.data_parallel,
        zero=plan.layout.zero,
        tensor_parallel=tp,
        replicas=replicas,
        rank_map=rank_map(plan, replicas, tp),
    )


def rank_map(plan: Plan, replicas: list[ReplicaRanks], tp: int) -> list[RankEntry]:
    """Every rank: (replica, tensor rank, device, stages), from each replica's stage ranks
    (a stage's tensor rank k runs at its rank + k, on the k-th device of its group)."""
    entries: dict[int, RankEntry] = {}
    for rep in replicas:
        for stage, (device, first) in enumerate(zip(rep.devices, rep.ranks, strict=True)):
            group = plan.tensor_groups.get(device, [device] * tp)
            for k in range(tp):
                entry = entries.setdefault(
                    first + k,
                    RankEntry(
                        rank=first + k,
                        replica=rep.replica,
                        tensor_rank=k,
                        device=group[k],
                        stages=[],
                    ),
                )
                entry.stages.append(stage)
    return [entries[r] for r in sorted(entries)]


def replica_ranks(plan: Plan) -> list[ReplicaRanks]:
    """Each replica's stage devices and ranks: rank = (replica x p + the position of the
    stage's device among replica 0's devices, in order of their first stage) x t (+ the
    tensor-parallel rank: a group's ranks are consecutive, as Megatron-LM orders them)."""
    first = [st.device for st in plan.stages]
    positions = {d: i for i, d in enumerate(dict.fromkeys(first))}
    p = len(positions)
    t = plan.layout.tensor_parallel
    devices = plan.replicas or [first]
    return [
        ReplicaRanks(
            replica=k,
            devices=list(devs),
            ranks=[(k * p + positions[d]) * t for d in first],
        )
        for k, devs in enumerate(devices)
    ]


def _write_tensor_ranks(mg, stage, st_plan, blocks, tp: int, source_dir: Path, out: Path):
    """A stage's model per tensor-parallel rank (`exporters.shard`), checked and hashed:
    (their manifest entries, the stage's sharded parameters, whether weights are present)."""
    shards = stage_shards(mg, blocks, list(st_plan.nodes), stage.index)
    sharded = {
        p: ParameterShard(axis=s.axis, parts=list(s.parts)) for p, s in shards.params.items()
    }
    whole = stage_model(mg, stage, stage.initializers)  # weights still the source's
    devices = st_plan.tensor_devices or [st_plan.device] * tp
    files, present_all = [], True
    for k in range(tp):
        rank_name = f"stage_{stage.index}_tp{k}.onnx"
        proto = shard_stage_model(whole, mg, shards, tp, k, lambda init: _array(init, source_dir))
        inits, wrote, present = relocate_weights(
            list(proto.graph.initializer), source_dir, out, f"{rank_name}.data"
        )
        present_all = present_all and present
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(inits)
        path = out / rank_name
        onnx.save(proto, str(path))
        _check(path, proto, present)
        files.append(
            TensorRankFile(
                tensor_rank=k,
                device=devices[k],
                file=rank_name,
                data_file=f"{rank_name}.data" if wrote else None,
                sha256=_sha256(path),
            )
        )
    return files, sharded, present_all


def _array(init: onnx.TensorProto, source_dir: Path):
    """An initializer's values (external data read from the source model's folder)."""
    from onnx import numpy_helper

    return numpy_helper.to_array(init, base_dir=str(source_dir))


def _check(path: Path, proto: onnx.ModelProto, weights_present: bool) -> None:
    """Full ONNX check; a weight-less stage is checked with empty placeholder data files."""
    try:
        if weights_present:
            onnx.checker.check_model(str(path), full_check=True)
            return
        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(scratch) / path.name
            shutil.copyfile(path, copy)
            for t in proto.graph.initializer:
                for e in t.external_data:
                    if e.key == "location":
                        (Path(scratch) / e.value).touch()
            onnx.checker.check_model(str(copy), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise PipeplanError(
            f"stage model {path.name} fails the ONNX checker: {str(exc).splitlines()[0]}"
        ) from None
