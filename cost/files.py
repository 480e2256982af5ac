"""Files in and out: atomic writes, and YAML/JSON documents read with one-line errors.

Every file pipeplan writes goes through a temporary file in the target's folder and an
`os.replace` (atomic on POSIX): a failure or a kill never leaves a half-written output.
Every document it reads (cluster specs, profiles, layer overrides) is parsed by
`read_document`, whose errors are one `PipeplanError` line naming the file, the line and
the problem.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cost.errors import PipeplanError


def current_umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_file(path: str | os.PathLike[str] | None, flag: str = "output") -> None:
    """Refuse an output file path before any work is done: one that names an existing
    folder, or lies in a folder that does not exist (`flag` names the option in errors)."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise PipeplanError(f"{flag} {path} is a folder, not a file")
    parent = target.parent
    if not parent.is_dir():
        raise PipeplanError(f"output folder does not exist: {parent} ({flag} {path})")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write via a temporary file in the same folder, then rename: never a half-written file.
    A final newline is added when `text` lacks one."""
    target = Path(path)
    check_output_file(target)
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


def save_figure_atomic(fig, path: str | os.PathLike[str], *, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG via a temporary file and a rename."""
    target = Path(path)
    check_output_file(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent or ".")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_text(path: str | os.PathLike[str], what: str) -> str:
    """The UTF-8 text of `path`; `what` names the file in errors ('cluster file', ...)."""
    p = Path(path)
    if not p.exists():
        raise PipeplanError(f"{what} not found: {path}")
    if not p.is_file():
        raise PipeplanError(f"{what.removesuffix(' file')} path is not a file: {path}")
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipeplanError(f"cannot read {what} {path}: {exc}") from None


def parse_yaml(text: str, label: str) -> Any:
    """YAML -> Python data; errors read `invalid YAML in LABEL line L column C: problem`."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise PipeplanError(f"invalid YAML in {label}{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise PipeplanError(f"invalid YAML in {label}: {' '.join(str(exc).split())}") from None


def parse_json(text: str, label: str) -> Any:
    """JSON -> Python data; errors read `invalid JSON in LABEL line L: problem`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PipeplanError(f"invalid JSON in {label} line {exc.lineno}: {exc.msg}") from None


def read_document(path: str | os.PathLike[str], what: str, label: str | None = None) -> Any:
    """Parse a YAML file (JSON for a `.json` extension) with one-line errors.

    `what` names the file when it is missing or unreadable ('cluster file not found: X');
    `label` names it in parse errors (default: the path)."""
    text = read_text(path, what)
    label = str(path) if label is None else label
    if Path(path).suffix.lower() == ".json":
        return parse_json(text, label)
    return parse_yaml(text, label)
