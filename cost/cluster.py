"""The cluster a plan runs on: nodes of devices, the links inside and between them.

A cluster file (YAML, or JSON by extension) reads::

    name: mixed
    nodes:
      - name: n0
        devices: 4x A100-80GB      # "<count>x <catalog name>", or a list of names or full device specs
        link: NVLink3              # intra-node: a preset name, or {bandwidth_GBps: 300, latency_us: 5}
      - name: n1
        devices: 2x V100-32GB
        link: PCIe4
    inter_node_link: IB-HDR

Rules and conveniences:

* `devices` is a string -- `"4x A100-80GB"`, `"4 x A100-80GB"`, `"A100-80GB"` (one), or
  several joined with `+` or `,` (`"2x V100-16GB + 1x T4"`) -- or a list whose entries
  are such strings, full device specs (see `cost.devices.DeviceSpec`), or
  `{like: <catalog name>, <field>: <override>, count: <n>}` (`count` defaults to 1; the
  variant keeps the catalog name unless it sets `name`, so name it if it differs).
* `link` (intra-node) is a preset name (`cost.links.PRESETS`), a full spec
  `{bandwidth_GBps: ..., latency_us: ...}` or `{like: <preset>, ...}`; it defaults to
  `PCIe4` (devices in a box without NVLink talk over PCIe 4.0 x16).
* A node without `name` is named `n<position>`. Node names must be unique and contain no
  '.'. Device ids are `"<node>.<index>"`: `n0.0`, `n0.1`, `n1.0`...
* `inter_node_link` is required as soon as there are 2 nodes or more.
* `overrides: [{between: [n0.0, n1.0], link: ...}]` sets the link of one device pair
  (either order: links are symmetric).
* Shorthand: a top-level `devices:` (and optional `link:`) instead of `nodes:` describes
  a single node named `n0`.
* Calibration profiles (`cost.profile`): a device entry `{profile: cpu.yaml, count: 2}`
  takes the measured figures (other fields override them), a link `{profile: cpu.yaml}`
  the measured link; relative paths resolve against the cluster file's folder. A profile
  file itself loads as a cluster of its one device.

Every mistake is reported as a `PipeplanError` on one line naming the file, the field
path and the bad value, e.g.
`invalid cluster spec c.yaml: nodes[1].link.bandwidth_GBps: must be > 0 (got -5)`.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from cost.devices import DeviceSpec, catalog_device, device_input
from cost.errors import PipeplanError
from cost.fields import format_validation_error
from cost.files import read_document
from cost.links import LOCAL_LINK, PRESETS, LinkSpec, link_input
from cost.profile import is_profile_document, link_spec_input

#: Intra-node link of a node that does not name one.
DEFAULT_INTRA_LINK = "PCIe4"

_COUNT_RE = re.compile(r"^(\d+)\s*[x×]\s*(\S.*)$", re.IGNORECASE)


def _field_error(message: str) -> PydanticCustomError:
    # The message goes through the context so that braces in it are never a template.
    return PydanticCustomError("pipeplan", "{message}", {"message": message})


def _guard(fn, value):
    """Run `fn(value)`, turning a PipeplanError into a field error (so it gets a location)."""
    try:
        return fn(value)
    except PipeplanError as exc:
        raise _field_error(str(exc)) from None


def _expand_device_string(text: str) -> list[DeviceSpec]:
    out: list[DeviceSpec] = []
    for part in re.split(r"[+,]", text):
        part = part.strip()
        if not part:
            raise PipeplanError(f"empty device entry in {text!r}")
        match = _COUNT_RE.match(part)
        if match:
            count, name = int(match[1]), match[2].strip()
        elif part[0].isdigit():
            raise PipeplanError(
                f"malformed device entry {part!r}: expected '<count>x <device>', e.g. '4x A100-80GB'"
            )
        else:
            count, name = 1, part
        if count < 1:
            raise PipeplanError(f"device count must be >= 1 (got {count} in {part!r})")
        out.extend([catalog_device(name)] * count)
    return out


def _base_dir(info: ValidationInfo | None) -> str | None:
    """The cluster file's folder, passed as validation context by `cluster_from_dict`."""
    context = info.context if info is not None else None
    return context.get("base_dir") if isinstance(context, dict) else None


def _link_value(value: Any, base_dir: str | None) -> Any:
    if isinstance(value, dict) and value.get("profile") is not None:
        return link_spec_input(value, base_dir)
    return link_input(value)


def _expand_device_entry(entry: Any, base_dir: str | None = None) -> list[Any]:
    if isinstance(entry, str):
        return _expand_device_string(entry)
    if isinstance(entry, DeviceSpec):
        return [entry]
    if isinstance(entry, dict):
        entry = dict(entry)
        count = entry.pop("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise PipeplanError(f"device count must be an integer >= 1 (got {count!r})")
        return [device_input(entry, base_dir)] * count
    raise PipeplanError(
        f"a device entry must be a name like '2x T4' or a mapping (got {type(entry).__name__}: {entry!r})"
    )


def _expand_devices(value: Any, base_dir: str | None = None) -> list[Any]:
    if value is None or value == "" or value == []:
        got = "nothing" if value is None else repr(value)
        raise PipeplanError(f"at least one device required (got {got})")
    if isinstance(value, str | dict | DeviceSpec):
        return _expand_device_entry(value, base_dir)
    if isinstance(value, list | tuple):
        out: list[Any] = []
        for entry in value:
            out.extend(_expand_device_entry(entry, base_dir))
        return out
    raise PipeplanError(
        f"devices must be a string like '4x A100-80GB' or a list (got {type(value).__name__}: {value!r})"
    )


class NodeSpec(BaseModel):
    """One host: its devices (in index order) and the link between them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    devices: list[DeviceSpec]
    link: LinkSpec = PRESETS[DEFAULT_INTRA_LINK]

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value.strip() or "." in value:
            raise _field_error(f"node names must be non-empty and contain no '.' (got {value!r})")
        return value

    @field_validator("devices", mode="before")
    @classmethod
    def _parse_devices(cls, value: Any, info: ValidationInfo) -> Any:
        return _guard(lambda v: _expand_devices(v, _base_dir(info)), value)

    @field_validator("link", mode="before")
    @classmethod
    def _parse_link(cls, value: Any, info: ValidationInfo) -> Any:
        return _guard(lambda v: _link_value(v, _base_dir(info)), value)


class LinkOverride(BaseModel):
    """The link between one pair of devices (ids like 'n0.0'), either direction."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    between: tuple[str, str]
    link: LinkSpec

    @field_validator("link", mode="before")
    @classmethod
    def _parse_link(cls, value: Any, info: ValidationInfo) -> Any:
        return _guard(lambda v: _link_value(v, _base_dir(info)), value)


class Cluster(BaseModel):
    """Nodes of devices and the links between them. See the module docstring."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "cluster"
    nodes: list[NodeSpec]
    inter_node_link: LinkSpec | None = None
    overrides: list[LinkOverride] = []

    _devices: dict[str, tuple[NodeSpec, DeviceSpec]] = PrivateAttr(default_factory=dict)
    _overrides: dict[frozenset[str], LinkSpec] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand_and_default_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "devices" in data:
            if "nodes" in data:
                raise _field_error("give either 'nodes' or the 'devices' shorthand, not both")
            node = {"name": "n0", "devices": data.pop("devices")}
            if "link" in data:
                node["link"] = data.pop("link")
            data["nodes"] = [node]
        nodes = data.get("nodes")
        if isinstance(nodes, list):
            data["nodes"] = [
                {"name": f"n{i}", **node} if isinstance(node, dict) and "name" not in node else node
                for i, node in enumerate(nodes)
            ]
        return data

    @field_validator("nodes")
    @classmethod
    def _check_nodes(cls, nodes: list[NodeSpec]) -> list[NodeSpec]:
        if not nodes:
            raise _field_error("at least one node required (got [])")
        seen: set[str] = set()
        for node in nodes:
            if node.name in seen:
                raise _field_error(f"duplicate node name {node.name!r}")
            seen.add(node.name)
        return nodes

    @field_validator("inter_node_link", mode="before")
    @classmethod
    def _parse_inter_link(cls, value: Any, info: ValidationInfo) -> Any:
        return None if value is None else _guard(lambda v: _link_value(v, _base_dir(info)), value)

    @model_validator(mode="after")
    def _check_links(self) -> Cluster:
        if len(self.nodes) >= 2 and self.inter_node_link is None:
            raise _field_error(
                f"inter_node_link: required when the cluster has 2 or more nodes "
                f"(got {len(self.nodes)} nodes and no inter_node_link)"
            )
        ids = [f"{n.name}.{i}" for n in self.nodes for i in range(len(n.devices))]
        known = set(ids)
        pairs: dict[frozenset[str], int] = {}
        for k, override in enumerate(self.overrides):
            a, b = override.between
            for dev in (a, b):
                if dev not in known:
                    raise _field_error(
                        f"overrides[{k}].between: unknown device id {dev!r} "
                        f"(ids: {_abbreviate(ids)})"
                    )
            if a == b:
                raise _field_error(f"overrides[{k}].between: a device and itself ({a!r})")
            key = frozenset((a, b))
            if key in pairs:
                raise _field_error(
                    f"overrides[{k}].between: pair {a}-{b} already set by overrides[{pairs[key]}]"
                )
            pairs[key] = k
        return self

    def model_post_init(self, __context: Any) -> None:
        for node in self.nodes:
            for i, dev in enumerate(node.devices):
                self._devices[f"{node.name}.{i}"] = (node, dev)
        for override in self.overrides:
            self._overrides[frozenset(override.between)] = override.link

    # ------------------------------------------------------------------ queries

    def device_ids(self) -> list[str]:
        """All device ids, in node order then index order ('n0.0', 'n0.1', 'n1.0', ...)."""
        return list(self._devices)

    @property
    def num_devices(self) -> int:
        """Number of devices over all nodes."""
        return len(self._devices)

    def _lookup(self, device_id: str) -> tuple[NodeSpec, DeviceSpec]:
        try:
            return self._devices[device_id]
        except (KeyError, TypeError):
            raise PipeplanError(
                f"unknown device id {device_id!r} in cluster {self.name} "
                f"(ids: {_abbreviate(self.device_ids())})"
            ) from None

    def device(self, device_id: str) -> DeviceSpec:
        """The device with id `device_id` ('n1.0'); PipeplanError if there is none."""
        return self._lookup(device_id)[1]

    def node_of(self, device_id: str) -> str:
        """Name of the node holding `device_id`."""
        return self._lookup(device_id)[0].name

    def node(self, name: str) -> NodeSpec:
        """The node called `name`."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise PipeplanError(f"unknown node {name!r} in cluster {self.name}")

    def link_between(self, a: str, b: str) -> LinkSpec:
        """The link from device `a` to device `b` (symmetric).

        An override for the pair wins; else the node's intra-node link when both are on
        one node; else `inter_node_link`. For `a == b` it is `cost.links.LOCAL_LINK`
        (infinite bandwidth, zero latency: `transfer_seconds` is exactly 0).
        """
        node_a, _ = self._lookup(a)
        node_b, _ = self._lookup(b)
        if a == b:
            return LOCAL_LINK
        override = self._overrides.get(frozenset((a, b)))
        if override is not None:
            return override
        if node_a.name == node_b.name:
            return node_a.link
        assert self.inter_node_link is not None  # enforced by validation for 2+ nodes
        return self.inter_node_link

    @property
    def price_per_hour(self) -> float | None:
        """Indicative USD per hour for all devices, or None if a device has no price."""
        prices = [dev.price_per_hour for _, dev in self._devices.values()]
        return None if any(p is None for p in prices) else float(sum(prices))

    def summary(self) -> str:
        """One line, e.g. 'mixed: 4x A100-80GB + 2x V100-32GB (6 devices, 2 nodes)'."""
        # Group equal specs (a `like:` variant keeps its base name unless given one, so
        # two groups may share a name: "1x A100-80GB + 2x A100-80GB").
        names: dict[str, str] = {}
        counts: Counter[str] = Counter()
        for _, dev in self._devices.values():
            key = dev.model_dump_json()
            names.setdefault(key, dev.name)
            counts[key] += 1
        kinds = " + ".join(f"{n}x {names[key]}" for key, n in counts.items())
        nd, nn = self.num_devices, len(self.nodes)
        return f"{self.name}: {kinds} ({nd} device{'s' * (nd != 1)}, {nn} node{'s' * (nn != 1)})"


def _abbreviate(items: list[str], limit: int = 8) -> str:
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... ({len(items)} in all)"


# ---------------------------------------------------------------------- loading


def cluster_from_dict(data: Any, source: str = "<dict>", base_dir: str | None = None) -> Cluster:
    """Validate a parsed cluster spec; bad input -> one-line PipeplanError naming `source`.

    `base_dir`: the folder relative profile paths resolve against (default: the working
    directory)."""
    if not isinstance(data, dict):
        got = "an empty document" if data is None else type(data).__name__
        raise PipeplanError(f"invalid cluster spec {source}: expected a mapping (got {got})")
    try:
        return Cluster.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise PipeplanError(
            f"invalid cluster spec {source}: {format_validation_error(exc)}"
        ) from None


def load_cluster(path: str | Path) -> Cluster:
    """Read a cluster spec from a YAML file (or JSON, for a `.json` extension)."""
    p = Path(path)
    data = read_document(p, "cluster file")
    if is_profile_document(data):  # a calibration profile: a cluster of its one device
        data = {"name": p.stem, "devices": [{"profile": p.name}]}
    return cluster_from_dict(data, source=str(p), base_dir=str(p.parent))
