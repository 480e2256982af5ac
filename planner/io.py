"""Files in and out: atomic writes, settings validation, JSON Schemas."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ValidationError

from planner.errors import PipeplanError


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write via a temporary file in the same folder, then rename: never a half-written file."""
    target = Path(path)
    if target.parent and not target.parent.exists():
        raise PipeplanError(f"output folder does not exist: {target.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            if not text.endswith("\n"):
                handle.write("\n")
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_figure_atomic(fig, path: str | os.PathLike[str], *, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG via a temporary file and a rename."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent or ".")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_text_atomic(path, text)


def config_from_options(model: type[BaseModel], **options) -> BaseModel:
    """Validate CLI settings into a pydantic model; one line naming the bad option."""
    try:
        return model(**options)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise PipeplanError(f"bad setting {field}={err.get('input')!r}: {msg}") from None


def schema_of(name: str) -> dict:
    from cost.cluster import Cluster
    from exporters.manifest import Manifest
    from planner.inspection import InspectReport
    from planner.plan_model import Plan

    models = {"plan": Plan, "manifest": Manifest, "cluster": Cluster, "inspect": InspectReport}
    if name not in models:
        raise PipeplanError(f"unknown schema '{name}' (choose from {', '.join(models)})")
    return models[name].model_json_schema()
