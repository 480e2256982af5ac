"""Execution providers per stage, and the kernels a stage needs that onnxruntime lacks.

A device's providers come from `run --providers` (every stage), else the cluster spec's
`providers:` of the stage's device (`cost.devices.DeviceSpec.providers`, kept in the
bundle's manifest), else CPU. Short names (`CPU`, `CUDA`, `TensorRT`, `OpenVINO`, ...)
stand for onnxruntime's `<Name>ExecutionProvider`; CPU is always appended as the
fallback, as onnxruntime itself does.

Before any process starts, every node of every stage file (and of the functions and
subgraphs it calls) is matched against the kernels this onnxruntime build registers
(`onnxruntime.capi._pybind_state.get_all_opkernel_def`: op, domain, opset range,
provider). A node no provider of its stage has a kernel for is refused in one line naming
the op, its domain and opset, and the stage: a session would fail the same way, but only
after the other stages had started. Operators ONNX defines as functions (CastLike, ...)
pass: onnxruntime expands them where it has no kernel. Providers that compile whole subgraphs (TensorRT,
OpenVINO) register no kernels; their stages fall back to CPU's, which are checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from cost.errors import PipeplanError

CPU = "CPUExecutionProvider"
#: operators onnxruntime replaces when it loads a graph (a Constant becomes an initializer)
NO_KERNEL_NEEDED = {("", "Constant")}

#: short name (lower case) -> onnxruntime's provider name
SHORT_NAMES = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
    "azure": "AzureExecutionProvider",
}


def provider_name(name: str) -> str:
    """onnxruntime's name for a provider given by short or full name."""
    key = name.strip().lower()
    if key in SHORT_NAMES:
        return SHORT_NAMES[key]
    if key.endswith("executionprovider"):
        for full in SHORT_NAMES.values():
            if full.lower() == key:
                return full
        return name.strip()
    raise PipeplanError(
        f"unknown execution provider {name!r}: use one of "
        f"{', '.join(sorted({n for n in SHORT_NAMES if len(n) > 3} | {'cpu'}))} "
        "or onnxruntime's full name (e.g. CUDAExecutionProvider)"
    )


def provider_list(names: Iterable[str]) -> list[str]:
    """Full provider names in order of preference, CPU last as the fallback."""
    out: list[str] = []
    for n in names:
        full = provider_name(n)
        if full not in out:
            out.append(full)
    if CPU not in out:
        out.append(CPU)
    return out


def inference_session(model: str | bytes, threads: int, providers: Sequence[str] = (CPU,)):
    """An `onnxruntime.InferenceSession` of `model` (a path or serialised bytes) as pipeplan
    runs and times them: `threads` intra-op threads, sequential execution, quiet logs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=list(providers))


def stage_providers(manifest, override: Sequence[str] | None = None) -> dict[int, list[str]]:
    """Stage index -> its session's providers (see the module docstring)."""
    out = {}
    for st in manifest.stages:
        if override:
            names: Iterable[str] = override
        else:
            names = manifest.cluster.device(st.device).providers or ["CPU"]
        out[st.index] = provider_list(names)
    return out


def check_available(providers: dict[int, list[str]], manifest) -> None:
    """Every requested provider is in this onnxruntime build, or a one-line error."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    for index, names in providers.items():
        for name in names:
            if name not in available:
                device = manifest.stages[index].device
                raise PipeplanError(
                    f"stage {index} (device {device}) needs {name}, which this onnxruntime "
                    f"{ort.__version__} lacks (it has {', '.join(sorted(available))})"
                )


@lru_cache(maxsize=1)
def _kernels() -> dict[tuple[str, str], list[tuple[int, int, str]]]:
    """(domain, op) -> [(first opset, last opset, provider)] of this onnxruntime build."""
    from onnxruntime.capi import _pybind_state as C

    out: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
    for k in C.get_all_opkernel_def():
        domain = "" if k.domain in ("", "ai.onnx") else k.domain
        start, end = k.version_range
        out.setdefault((domain, k.op_name), []).append((start, end, k.provider))
    return out


def _schema(op: str, domain: str, opset: int) -> tuple[int, bool]:
    """(the opset the node's schema dates from, what kernels are registered by; whether
    ONNX defines it as a function, which onnxruntime expands where it has no kernel)."""
    import onnx.defs

    try:
        schema = onnx.defs.get_schema(op, opset, domain)
    except Exception:  # not an ONNX schema (contrib or custom domain): the import itself
        return opset, False
    expands = schema.has_function or schema.has_context_dependent_function
    return schema.since_version, expands


def missing_kernels(model_path: str | Path, providers: Sequence[str]) -> list[str]:
    """'domain.Op (opset N)' for every distinct node of the model that no provider in
    `providers` has a kernel for (functions and subgraphs included)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    kernels = _kernels()
    wanted = set(providers)
    functions = {(f.domain, f.name): f for f in model.functions}
    missing: dict[str, None] = {}

    def opsets_of(imports) -> dict[str, int]:
        return {("" if o.domain == "ai.onnx" else o.domain): o.version for o in imports}

    def visit(nodes, opsets: dict[str, int]) -> None:
        for node in nodes:
            domain = "" if node.domain == "ai.onnx" else node.domain
            fn = functions.get((node.domain, node.op_type))
            if fn is not None:  # onnxruntime inlines local functions: check their bodies
                visit(fn.node, {**opsets, **opsets_of(fn.opset_import)})
                continue
            for attr in node.attribute:
                for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    visit(g.node, opsets)
            if (domain, node.op_type) in NO_KERNEL_NEEDED:
                continue
            opset = opsets.get(domain, 1)
            since, expands = _schema(node.op_type, domain, opset)
            ranges = kernels.get((domain, node.op_type), [])
            if not expands and not any(s <= since <= e and p in wanted for s, e, p in ranges):
                label = f"{domain or 'ai.onnx'}.{node.op_type} (opset {opset})"
                missing.setdefault(label, None)

    visit(model.graph.node, opsets_of(model.opset_import))
    return list(missing)


def check_kernels(root: Path, manifest, providers: dict[int, list[str]]) -> None:
    """Refuse a bundle whose stages need an operator onnxruntime has no kernel for."""
    import onnxruntime as ort

    for st in manifest.stages:
        names = [st.file] + [t.file for t in st.tensor_files]
        for name in dict.fromkeys(names):
            lacking = missing_kernels(root / name, providers[st.index])
            if lacking:
                more = f" (and {len(lacking) - 1} more)" if len(lacking) > 1 else ""
                raise PipeplanError(
                    f"stage {st.index} ({name}) needs {lacking[0]}{more}, which onnxruntime "
                    f"{ort.__version__} has no kernel for on "
                    f"{', '.join(providers[st.index])}: it cannot run this bundle"
                )
