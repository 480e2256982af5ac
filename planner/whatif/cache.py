"""Plans cached on disk, so that a repeated what-if sweep does not solve again.

An entry is keyed by the SHA-256 of a canonical JSON of everything a plan depends on:
the graph hash (`ModelGraph.graph_hash`, structure and shapes, weights excluded), the
shape bindings, the cluster (as validated, JSON), the settings (`PlanConfig`, JSON), the
layer options (`--layers` file content hash, `--layer-depth`, max layer share), and the
pipeplan version, the plan schema version and a fingerprint of the planner's and cost
model's source (`code_fingerprint`: a code change never serves stale plans). One JSON
file per key,
`<folder>/<key[:2]>/<key>.json`, written atomically (`cost.files.write_text_atomic`):

    {"key": ..., "pipeplan": "0.1.0", "fits": true, "plan": {...PLAN.json...}}
    {"key": ..., "pipeplan": "0.1.0", "fits": false, "error": "<DoesNotFitError line>"}

"Does not fit" outcomes are cached too (with their message): a sweep or a
`--min-devices` search asks the same infeasible questions again. Other errors are not
cached. A file that does not parse, does not validate or holds another key is ignored
(a miss) and rewritten. The cache is best-effort: a folder that cannot be created or
written disables writing, never the command.

Folder: `$PIPEPLAN_CACHE_DIR`, else `~/.cache/pipeplan/plans`. Nothing expires; delete
the folder to clear it (entries are a few hundred kB each for small models).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from cost.cluster import Cluster
from cost.errors import DoesNotFitError
from cost.files import write_text_atomic
from planner.api import plan_graph
from planner.config import PlanConfig
from planner.graph.shapes import ShapeBindings
from planner.plan_file import SCHEMA_VERSION, Plan

ENV_VAR = "PIPEPLAN_CACHE_DIR"


def pipeplan_version() -> str:
    try:
        from importlib.metadata import version

        return version("pipeplan")
    except Exception:  # not installed (running from a checkout)
        return "0+unknown"


def default_cache_dir() -> Path:
    """`$PIPEPLAN_CACHE_DIR`, else `~/.cache/pipeplan/plans`."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "pipeplan" / "plans"


@dataclass(frozen=True)
class LayerOptions:
    """How layers were grouped: part of the key (the same graph, grouped otherwise, plans
    otherwise)."""

    layers_file: str | None = None
    layer_depth: int | None = None
    max_layer_share: float | None = None

    def key_data(self) -> dict:
        digest = None
        if self.layers_file:
            try:
                digest = hashlib.sha256(Path(self.layers_file).read_bytes()).hexdigest()
            except OSError:
                digest = f"unreadable:{self.layers_file}"
        return {
            "layers_file_sha256": digest,
            "layer_depth": self.layer_depth,
            "max_layer_share": self.max_layer_share,
        }


def bindings_data(bindings: ShapeBindings) -> dict:
    return {
        "dims": dict(sorted(bindings.dims.items())),
        "batch": bindings.batch,
        "input_shapes": {k: list(v) for k, v in sorted(bindings.input_shapes.items())},
    }


def fingerprinted_sources() -> list[Path]:
    """The source files whose content keys cached plans: every module of `planner` and
    `cost`, in a stable order."""
    import cost

    planner_dir = Path(__file__).resolve().parents[1]  # planner/whatif/cache.py -> planner/
    cost_dir = Path(cost.__file__).resolve().parent
    return sorted(path for folder in (planner_dir, cost_dir) for path in folder.rglob("*.py"))


@functools.cache
def code_fingerprint() -> str:
    """Hash of the planner's and cost model's source: a code change invalidates cached plans."""
    h = hashlib.sha256()
    for path in fingerprinted_sources():
        h.update(f"{path.parent.name}/{path.name}".encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def plan_key(
    graph_hash: str,
    cluster: Cluster,
    config: PlanConfig,
    bindings: ShapeBindings,
    layer_options: LayerOptions | None = None,
) -> str:
    """SHA-256 (hex) of the canonical JSON of everything a plan depends on."""
    data = {
        "graph_hash": graph_hash,
        "bindings": bindings_data(bindings),
        "cluster": cluster.model_dump(mode="json"),
        "config": config.model_dump(mode="json"),
        "layers": (layer_options or LayerOptions()).key_data(),
        "pipeplan": pipeplan_version(),
        "code": code_fingerprint(),
        "schema_version": SCHEMA_VERSION,
    }
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class PlanCache:
    """Plans (and "does not fit" outcomes) on disk, with an in-memory layer on top.

    `hits` counts answers served from the cache (memory or disk), `misses` plans solved."""

    folder: Path | None = None
    enabled: bool = True
    hits: int = 0
    misses: int = 0
    _memory: dict[str, Plan | DoesNotFitError] = field(default_factory=dict, repr=False)
    _writable: bool = True

    def __post_init__(self) -> None:
        if self.folder is None:
            self.folder = default_cache_dir()
        self.folder = Path(self.folder)

    def path_of(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> Plan | DoesNotFitError | None:
        """The cached outcome for `key`, or None (absent, unreadable or corrupted)."""
        if key in self._memory:
            return self._memory[key]
        if not self.enabled:
            return None
        path = self.path_of(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("key") != key:
                return None
            if data.get("fits") is True:
                outcome: Plan | DoesNotFitError = Plan.model_validate(data["plan"])
            elif data.get("fits") is False and isinstance(data.get("error"), str):
                outcome = DoesNotFitError(data["error"])
            else:
                return None
        except (OSError, ValueError, KeyError, TypeError, ValidationError):
            return None
        self._memory[key] = outcome
        return outcome

    def put(self, key: str, outcome: Plan | DoesNotFitError) -> None:
        self._memory[key] = outcome
        if not (self.enabled and self._writable):
            return
        entry: dict = {"key": key, "pipeplan": pipeplan_version()}
        if isinstance(outcome, Plan):
            entry |= {"fits": True, "plan": outcome.model_dump(mode="json")}
        else:
            entry |= {"fits": False, "error": str(outcome)}
        path = self.path_of(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(entry, separators=(",", ":")))
        except Exception:  # best-effort: a read-only cache never fails the command
            self._writable = False

    def plan(
        self,
        mg,
        lg,
        cluster: Cluster,
        config: PlanConfig,
        bindings: ShapeBindings,
        layer_options: LayerOptions | None = None,
    ) -> Plan:
        """`planner.api.plan_graph`, served from the cache when it can be.

        Raises `DoesNotFitError` (cached or fresh) like `plan_graph`."""
        key = plan_key(mg.graph_hash, cluster, config, bindings, layer_options)
        found = self.get(key)
        if found is not None:
            self.hits += 1
            if isinstance(found, DoesNotFitError):
                raise DoesNotFitError(str(found))
            return found
        self.misses += 1
        try:
            result = plan_graph(mg, lg, cluster, config, bindings)
        except DoesNotFitError as exc:
            self.put(key, DoesNotFitError(str(exc)))
            raise
        self.put(key, result)
        return result
