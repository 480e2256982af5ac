"""Weights of a stage model: inline, or copied into the stage's own external-data file.

External weights are streamed range by range from the source model's data files (never
all in memory) into `stage_<i>.onnx.data`, aligned to 4 KiB as ONNX's own writer does.
A stage whose inline weights would pass protobuf's 2 GB limit has them moved out too.
When the source has no weight data at all (a graph-only model), the stage keeps external
references to a data file that is not written, and the manifest says weights are absent.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from cost.tensor import TensorInfo
from planner.graph.onnx_io import external_data_location

ALIGNMENT = 4096
#: Inline weights above this move to an external file (protobuf's hard limit is 2 GiB).
INLINE_LIMIT_BYTES = 1_500_000_000
COPY_CHUNK = 64 << 20


def _entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _set_external(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _inline_bytes(tensor: onnx.TensorProto) -> int:
    return tensor.ByteSize()


def relocate_weights(
    initializers: list[onnx.TensorProto], source_dir: Path, out_dir: Path, data_name: str
) -> tuple[list[onnx.TensorProto], bool, bool]:
    """Copies of `initializers` ready for a stage file next to `out_dir / data_name`.

    Returns (tensors, wrote_data_file, weights_present).
    """
    out: list[onnx.TensorProto] = []
    external = [t for t in initializers if external_data_location(t) is not None]
    inline = [t for t in initializers if external_data_location(t) is None]
    move_inline = sum(_inline_bytes(t) for t in inline) > INLINE_LIMIT_BYTES
    present = all((source_dir / external_data_location(t)).exists() for t in external)
    data_path = out_dir / data_name
    offset = 0
    wrote = False
    handle = open(data_path, "wb") if (external and present) or move_inline else None  # noqa: SIM115
    try:
        for t in inline:
            copy = onnx.TensorProto()
            copy.CopyFrom(t)
            if move_inline and handle is not None:
                raw = onnx.numpy_helper.to_array(t).tobytes()
                offset = _pad(handle, offset)
                handle.write(raw)
                copy.ClearField("raw_data")
                for name in (
                    "float_data",
                    "int32_data",
                    "int64_data",
                    "double_data",
                    "uint64_data",
                ):
                    copy.ClearField(name)
                _set_external(copy, data_name, offset, len(raw))
                offset += len(raw)
                wrote = True
            out.append(copy)
        for t in external:
            copy = onnx.TensorProto()
            copy.CopyFrom(t)
            entries = _entries(t)
            length = int(entries.get("length", 0)) or _nbytes(t)
            if handle is not None and present:
                src_offset = int(entries.get("offset", 0))
                offset = _pad(handle, offset)
                with open(source_dir / entries["location"], "rb") as src:
                    src.seek(src_offset)
                    _copy_range(src, handle, length)
                wrote = True
            else:
                offset = -(-offset // ALIGNMENT) * ALIGNMENT
            _set_external(copy, data_name, offset, length)
            offset += length
            out.append(copy)
    finally:
        if handle is not None:
            handle.close()
    if not wrote and data_path.exists():
        data_path.unlink()
    return out, wrote, present


def _nbytes(t: onnx.TensorProto) -> int:
    return TensorInfo(t.name, tuple(t.dims), t.data_type).nbytes


def _pad(handle, offset: int) -> int:
    aligned = -(-offset // ALIGNMENT) * ALIGNMENT
    if aligned > offset:
        handle.write(b"\0" * (aligned - offset))
    return aligned


def _copy_range(src, dst, length: int) -> None:
    remaining = length
    while remaining > 0:
        chunk = src.read(min(COPY_CHUNK, remaining))
        if not chunk:
            raise OSError("external data file is shorter than its tensors say")
        dst.write(chunk)
        remaining -= len(chunk)
