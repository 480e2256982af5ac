"""Pydantic field types of the specs, and their errors on one line.

The cluster spec, device and link specs and calibration profiles validate user input
with these types; `format_validation_error` turns pydantic's error list into the one line
a user reads (`nodes[1].link.bandwidth_GBps: must be > 0 (got -5)`). Names in catalogs
(devices, link presets) are looked up case- and punctuation-insensitively, with
`difflib` suggestions when they are unknown.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, ValidationError
from pydantic_core import PydanticCustomError

from cost.errors import PipeplanError

#: Compute precisions a device is rated for (see `cost.devices` for the fallback chain).
Dtype = Literal["fp32", "tf32", "fp16", "bf16"]


def fmt_number(value: Any) -> str:
    """A number as a user wrote it: -5.0 -> '-5', 0.5 -> '0.5'."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float | int) else str(value)


def _positive(value: float) -> float:
    if not value > 0:
        raise PydanticCustomError("positive", "must be > 0 (got {got})", {"got": fmt_number(value)})
    return value


def _non_negative(value: float) -> float:
    if not value >= 0:
        raise PydanticCustomError(
            "non_negative", "must be >= 0 (got {got})", {"got": fmt_number(value)}
        )
    return value


def _fraction(value: float) -> float:
    if not 0 < value <= 1:
        raise PydanticCustomError(
            "fraction", "must be in (0, 1] (got {got})", {"got": fmt_number(value)}
        )
    return value


Positive = Annotated[float, AfterValidator(_positive)]
NonNegative = Annotated[float, AfterValidator(_non_negative)]
Fraction = Annotated[float, AfterValidator(_fraction)]

_BUILTIN_MESSAGES = {
    "extra_forbidden": "unknown field",
    "missing": "required field missing",
}


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic marks errors on a dict key this way
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def format_validation_error(exc: ValidationError) -> str:
    """All errors of a pydantic `ValidationError` on ONE line.

    Each error reads `field.path[index].name: message (got value)`; errors are joined with
    "; ". Messages raised by pipeplan's own validators already name the bad value.
    """
    parts = []
    for err in exc.errors(include_url=False):
        etype = err["type"]
        msg = _BUILTIN_MESSAGES.get(etype, err["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif msg.startswith("Assertion failed, "):
            msg = msg[len("Assertion failed, ") :]
        value = err.get("input")
        ours = etype in ("positive", "non_negative", "fraction", "value_error", "pipeplan")
        if not ours and etype != "missing" and isinstance(value, str | int | float | bool):
            msg += f" (got {value!r})" if isinstance(value, str) else f" (got {value})"
        where = _loc(tuple(err["loc"]))
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def normalise_name(name: str) -> str:
    """Catalog key of a name: lower case, letters and digits only ('a100_80gb' == 'A100-80GB')."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    """'unknown device 'X'; did you mean A, B?' with difflib suggestions, on one line."""
    by_key = {normalise_name(k): k for k in known}
    close = difflib.get_close_matches(normalise_name(name), list(by_key), n=3, cutoff=0.5)
    if close:
        return f"unknown {kind} {name!r}; did you mean {', '.join(by_key[c] for c in close)}?"
    return f"unknown {kind} {name!r}; known: {', '.join(known)}"


T = TypeVar("T")


def lookup_name(name: Any, table: Mapping[str, T], by_key: Mapping[str, str], kind: str) -> T:
    """`table[by_key[normalise_name(name)]]`, or a one-line `PipeplanError` naming `kind`
    with the closest known names."""
    if not isinstance(name, str):
        raise PipeplanError(f"{kind} name must be a string (got {name!r})")
    found = by_key.get(normalise_name(name))
    if found is None:
        raise PipeplanError(unknown_name_message(kind, name, list(table)))
    return table[found]
