"""What-if scenarios: clusters derived from a given one, and how each splits into replicas.

Pure functions of `cost.cluster.Cluster` values (no model, no solver, no files).

Scenarios (`build_scenarios`), each a cluster and a name; the given cluster is always the
first ("base"):

* `--add KIND:N[,N...]` (`parse_add`): one scenario per N, adding N devices of KIND
  (`add_devices`). Added devices first fill the nodes that already hold KIND, in order,
  up to `NODE_SIZE` (8) devices per node; the rest go to new nodes of up to 8 devices.
  A new node gets the intra-node link of the first node already holding KIND, else
  `default_intra_link(KIND)` (NVLink4 for H100/H200, NVLink3 for A100, PCIe4
  otherwise). Between nodes: the cluster's `inter_node_link`, or IB-HDR when the given
  cluster has a single node. A KIND already in the cluster is copied as the cluster
  defines it (a `like:` variant keeps its overrides, price included); otherwise it is the
  catalog entry. Each `--add` flag is one *sweep*, its N taken in increasing order.
* `--replace OLD=NEW` (`parse_replace`): every device of kind OLD becomes NEW, in place
  (same ids, same nodes, same links: a V100 box on PCIe stays on PCIe).
* `--link PRESET` (`parse_link`): the inter-node link becomes PRESET. On a cluster with a
  single node there is no inter-node link, so the scenario changes the node's intra-node
  link instead (the only link there is), and its name says so: `link NVLink3
  (intra-node)`.
* None of these: the default sweep doubles the most common kind (ties: the first in
  cluster order): x2 and x4 of its count, i.e. `--add KIND:c,3c` for c devices.

Device kinds are matched by name (`DeviceSpec.name`), case- and punctuation-insensitive.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from cost.cluster import Cluster
from cost.devices import CATALOG, DeviceSpec, catalog_device
from cost.errors import PipeplanError
from cost.fields import normalise_name, unknown_name_message
from cost.links import PRESETS, LinkSpec, preset_link

#: Devices per node when adding devices (an HGX/DGX box).
NODE_SIZE = 8

#: Inter-node link of a scenario that turns a single-node cluster into several nodes.
DEFAULT_INTER_LINK = "IB-HDR"


# ----------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class AddSweep:
    """`--add KIND:N,N,...`: add N devices of `kind` for each N (increasing)."""

    kind: str
    counts: tuple[int, ...]


@dataclass(frozen=True)
class Replace:
    """`--replace OLD=NEW`: every device of kind `old` becomes `new`."""

    old: str
    new: str


def _split_once(text: str, sep: str, flag: str, form: str) -> tuple[str, str]:
    if not isinstance(text, str) or text.count(sep) != 1:
        raise PipeplanError(f"malformed {flag} {text!r}: expected {form}")
    left, right = (part.strip() for part in text.split(sep))
    if not left or not right:
        raise PipeplanError(f"malformed {flag} {text!r}: expected {form}")
    return left, right


def parse_add(text: str) -> AddSweep:
    """'A100-80GB:1,2,4' -> AddSweep('A100-80GB', (1, 2, 4)); the kind is checked later."""
    form = "KIND:N[,N...], e.g. A100-80GB:1,2,4"
    kind, counts_text = _split_once(text, ":", "--add", form)
    counts: list[int] = []
    for part in counts_text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise PipeplanError(f"malformed --add {text!r}: {part!r} is not a count ({form})")
        n = int(part)
        if n < 1:
            raise PipeplanError(f"malformed --add {text!r}: counts must be >= 1 (got {n})")
        counts.append(n)
    return AddSweep(kind, tuple(sorted(set(counts))))


def parse_replace(text: str) -> Replace:
    """'V100-32GB=H100-80GB' -> Replace('V100-32GB', 'H100-80GB')."""
    old, new = _split_once(text, "=", "--replace", "OLD=NEW, e.g. V100-32GB=H100-80GB")
    return Replace(old, new)


def parse_link(text: str) -> LinkSpec:
    """A link preset by name ('IB-NDR'); unknown names -> one-line PipeplanError."""
    return preset_link(text)


# ----------------------------------------------------------------------------- kinds


def kinds_in(cluster: Cluster) -> dict[str, DeviceSpec]:
    """Device kinds of the cluster by name, the first spec seen for each name."""
    out: dict[str, DeviceSpec] = {}
    for node in cluster.nodes:
        for dev in node.devices:
            out.setdefault(dev.name, dev)
    return out


def resolve_kind(cluster: Cluster, name: str, *, must_exist: bool = False) -> DeviceSpec:
    """The device spec for kind `name`: as the cluster defines it, else the catalog entry.

    `must_exist`: the kind must be in the cluster (for `--replace OLD`)."""
    present = kinds_in(cluster)
    key = normalise_name(name) if isinstance(name, str) else None
    for kind, spec in present.items():
        if normalise_name(kind) == key:
            return spec
    if must_exist:
        # Valid catalog name but absent, or not a device at all: say which.
        catalog_device(name)  # raises "unknown device" with suggestions
        raise PipeplanError(
            f"no {catalog_device(name).name} in cluster {cluster.name} "
            f"(it has {', '.join(present)})"
        )
    try:
        return catalog_device(name)
    except PipeplanError:
        raise PipeplanError(
            unknown_name_message(
                "device", name, [*present, *(k for k in CATALOG if k not in present)]
            )
        ) from None


def default_intra_link(kind: str) -> LinkSpec:
    """NVLink4 for H100/H200 (SXM), NVLink3 for A100, PCIe4 for anything else."""
    key = normalise_name(kind)
    if key.startswith("h100") and "pcie" not in key or key.startswith("h200"):
        return PRESETS["NVLink4"]
    if key.startswith("a100"):
        return PRESETS["NVLink3"]
    return PRESETS["PCIe4"]


def _node_link_for(cluster: Cluster | None, spec: DeviceSpec) -> LinkSpec:
    if cluster is not None:
        for node in cluster.nodes:
            if any(d.name == spec.name for d in node.devices):
                return node.link
    return default_intra_link(spec.name)


def _fresh_names(cluster: Cluster, n: int) -> list[str]:
    used = {node.name for node in cluster.nodes}
    names, i = [], len(cluster.nodes)
    while len(names) < n:
        if f"n{i}" not in used:
            names.append(f"n{i}")
            used.add(f"n{i}")
        i += 1
    return names


def _rebuild(cluster: Cluster, **update) -> Cluster:
    """A validated copy (so private lookups are rebuilt)."""
    data = cluster.model_dump() | update
    return Cluster.model_validate(data)


# ----------------------------------------------------------------------------- scenarios


def add_devices(cluster: Cluster, spec: DeviceSpec, n: int) -> Cluster:
    """`cluster` with `n` more devices `spec`: fill its nodes up to 8, then new nodes of 8."""
    if n < 1:
        return cluster
    left = n
    nodes: list[dict] = []
    for node in cluster.nodes:
        devices = list(node.devices)
        if left and any(d.name == spec.name for d in devices) and len(devices) < NODE_SIZE:
            take = min(left, NODE_SIZE - len(devices))
            devices += [spec] * take
            left -= take
        nodes.append({"name": node.name, "devices": devices, "link": node.link})
    link = _node_link_for(cluster, spec)
    fresh = _fresh_names(cluster, math.ceil(left / NODE_SIZE))
    for name in fresh:
        take = min(left, NODE_SIZE)
        nodes.append({"name": name, "devices": [spec] * take, "link": link})
        left -= take
    inter = cluster.inter_node_link
    if len(nodes) > 1 and inter is None:
        inter = PRESETS[DEFAULT_INTER_LINK]
    return _rebuild(cluster, nodes=nodes, inter_node_link=inter)


def replace_devices(cluster: Cluster, old: DeviceSpec, new: DeviceSpec) -> Cluster:
    """Every device named `old.name` becomes `new`; ids, nodes and links unchanged."""
    nodes = [
        {
            "name": node.name,
            "devices": [new if d.name == old.name else d for d in node.devices],
            "link": node.link,
        }
        for node in cluster.nodes
    ]
    return _rebuild(cluster, nodes=nodes)


def with_link(cluster: Cluster, link: LinkSpec) -> tuple[Cluster, bool]:
    """The inter-node link set to `link`; on one node, the intra-node link (second: True)."""
    if len(cluster.nodes) == 1:
        node = cluster.nodes[0]
        nodes = [{"name": node.name, "devices": list(node.devices), "link": link}]
        return _rebuild(cluster, nodes=nodes), True
    return _rebuild(cluster, inter_node_link=link), False


def homogeneous_cluster(
    spec: DeviceSpec, n: int, like: Cluster | None = None, name: str | None = None
) -> Cluster:
    """n devices `spec` in nodes of 8, linked as `add_devices` would link them to `like`."""
    if n < 1:
        raise PipeplanError(f"a cluster needs at least one device (got {n})")
    link = _node_link_for(like, spec)
    inter = None
    if n > NODE_SIZE:
        inter = (like.inter_node_link if like is not None else None) or PRESETS[DEFAULT_INTER_LINK]
    nodes = [
        {"name": f"n{i}", "devices": [spec] * min(NODE_SIZE, n - i * NODE_SIZE), "link": link}
        for i in range(math.ceil(n / NODE_SIZE))
    ]
    return Cluster.model_validate(
        {"name": name or f"{n}x {spec.name}", "nodes": nodes, "inter_node_link": inter}
    )


def device_kinds(cluster: Cluster) -> str:
    """'4x A100-80GB + 2x V100-32GB' (kinds by name, in order of first appearance)."""
    counts: Counter[str] = Counter(d.name for node in cluster.nodes for d in node.devices)
    return " + ".join(f"{n}x {kind}" for kind, n in counts.items())


@dataclass
class Scenario:
    """One cluster to plan. `sweep` groups the rows of one --add flag; `added` counts the
    devices added to the base cluster (for the marginal gain)."""

    name: str
    cluster: Cluster
    sweep: str
    added: int = 0
    note: str = ""


def build_scenarios(
    cluster: Cluster,
    adds: list[str] | None = None,
    replaces: list[str] | None = None,
    links: list[str] | None = None,
    *,
    default_sweep: bool = True,
) -> list[Scenario]:
    """The base cluster, then each --add sweep, each --replace, each --link (see module
    doc); with none of them, the default sweep unless `default_sweep` is False."""
    sweeps = [parse_add(a) for a in adds or []]
    swaps = [parse_replace(r) for r in replaces or []]
    presets = [parse_link(link) for link in links or []]
    out = [Scenario("base", cluster, "base")]
    if default_sweep and not (sweeps or swaps or presets):
        counts = Counter(d.name for node in cluster.nodes for d in node.devices)
        kind, c = max(counts.items(), key=lambda kv: kv[1])  # first in order on ties
        sweeps = [AddSweep(kind, (c, 3 * c))]
    for sweep in sweeps:
        spec = resolve_kind(cluster, sweep.kind)
        label = f"+{spec.name}"
        for n in sweep.counts:
            out.append(Scenario(f"+{n} {spec.name}", add_devices(cluster, spec, n), label, n))
    for swap in swaps:
        old = resolve_kind(cluster, swap.old, must_exist=True)
        new = resolve_kind(cluster, swap.new)
        out.append(
            Scenario(
                f"{old.name}->{new.name}",
                replace_devices(cluster, old, new),
                f"{old.name}->{new.name}",
            )
        )
    for link in presets:
        derived, intra = with_link(cluster, link)
        name = f"link {link.name}" + (" (intra-node)" if intra else "")
        note = "one node: the intra-node link changed" if intra else ""
        out.append(Scenario(name, derived, name, note=note))
    return out
