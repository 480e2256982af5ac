"""The partitioning problem as plain numbers: what every strategy optimises over.

`build_problem` prices each layer on each *device group* (devices of one node with
identical specs, which are interchangeable: placing a stage on one or another of them
gives the same cost) and lists the tensors that flow between layers. Strategies (ILP,
baselines, exhaustive search in tests) all read this and are judged by
`planner.partition.objective.evaluate`, so they are compared under one cost model.

On a device with a calibration profile, an operator whose `signature` the profile holds
costs its measured forward and backward time; the others the roofline with the profile's
fitted figures (`cost.roofline`, `cost.profile`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from cost.cluster import Cluster
from cost.collectives import ReplicaRing, ring_allgather_seconds, ring_allreduce_seconds
from cost.devices import DeviceSpec
from cost.errors import PipeplanError
from cost.links import LOCAL_LINK, LinkSpec
from cost.memory import bytes_per_param
from cost.optimizer import optimizer_step_seconds
from cost.roofline import backward_seconds, dtype_bytes_scale, forward_seconds, weight_grad_fraction
from planner.config import PlanConfig
from planner.graph.layers import LayerGraph
from planner.graph.load import ModelGraph
from planner.graph.shard_price import TensorParallelGraph


@dataclass(frozen=True)
class DeviceGroup:
    """Interchangeable devices: same node, same spec, no per-pair link overrides."""

    index: int
    node: str
    spec: DeviceSpec
    devices: tuple[str, ...]


@dataclass(frozen=True)
class LayerCost:
    """One layer's per-micro-batch cost on each device group."""

    index: int
    name: str
    forward_s: tuple[float, ...]  # per group
    backward_s: tuple[float, ...]  # per group
    weight_grad_s: tuple[float, ...]  # per group: the part of backward_s computing weight gradients
    state_bytes: int  # weights + grads + optimizer state of parameters used by this layer only
    buffer_bytes: int
    activation_bytes: int  # saved for backward per micro-batch, at the plan's dtype
    param_bytes: int  # bytes of the weights themselves (for the `params` baseline)
    #: per group: the step tail of this layer's own parameters, once per iteration: the
    #: gradient all-reduce across data-parallel replicas, the optimizer step (of 1/r of
    #: them with ZeRO-1) and ZeRO-1's parameter all-gather. What every strategy prices.
    optimizer_s: tuple[float, ...] = ()
    #: per group: the collective part of `optimizer_s` (all-reduce + all-gather)
    sync_s: tuple[float, ...] = ()
    #: per group, per micro-batch: the tensor-parallel all-reduces inside forward_s and
    #: backward_s (0 without tensor parallelism)
    tensor_s: tuple[float, ...] = ()

    def compute_s(self, group: int, training: bool) -> float:
        return self.forward_s[group] + (self.backward_s[group] if training else 0.0)


@dataclass(frozen=True)
class Flow:
    """A tensor produced by one layer and consumed by later ones."""

    tensor: str
    producer: int
    consumers: tuple[int, ...]
    nbytes: int  # per micro-batch, at the plan's dtype
    is_float: bool  # only floating-point tensors carry gradients back


@dataclass(frozen=True)
class SharedParam:
    """A weight used by several layers (tied embeddings): held once per stage using it."""

    name: str
    layers: tuple[int, ...]
    state_bytes: int
    #: per group: the step tail of this weight (once per stage holding it), as `LayerCost`
    optimizer_s: tuple[float, ...] = ()
    #: per group: the collective part of `optimizer_s`
    sync_s: tuple[float, ...] = ()


@dataclass
class Problem:
    layers: list[LayerCost]
    edges: list[tuple[int, int]]
    flows: list[Flow]
    shared: list[SharedParam]
    groups: list[DeviceGroup]
    cluster: Cluster
    config: PlanConfig
    links: dict[tuple[int, int], LinkSpec] = field(default_factory=dict)
    #: the data-parallel replicas this pipeline is one of (None: a single pipeline)
    ring: ReplicaRing | None = None
    #: each stage's tensor-parallel group: how its operators are sharded (None: t = 1)
    tensor: TensorParallelGraph | None = None

    @property
    def tensor_parallel(self) -> int:
        return self.tensor.degree if self.tensor is not None else 1

    @property
    def training(self) -> bool:
        return self.config.training

    @property
    def num_devices(self) -> int:
        return sum(len(g.devices) for g in self.groups)

    @property
    def max_stages(self) -> int:
        return min(self.num_devices, len(self.layers))

    def capacity(self, group: int) -> float:
        return self.groups[group].spec.memory_bytes * (1.0 - self.config.memory_headroom)

    def link(self, a: int, b: int) -> LinkSpec:
        """The link between devices of two groups (a device to itself: free, as when
        interleaved chunks meet on one device)."""
        if (a, b) not in self.links and a == b:
            return LOCAL_LINK
        return self.links[(a, b)]

    @cached_property
    def group_of_device(self) -> dict[str, int]:
        return {d: g.index for g in self.groups for d in g.devices}

    @cached_property
    def is_chain(self) -> bool:
        """Layers form a chain: every edge links consecutive layers."""
        return all(v == u + 1 for u, v in self.edges)


def device_groups(cluster: Cluster) -> list[DeviceGroup]:
    """Group interchangeable devices; a device named in a link override stands alone."""
    overridden = {d for o in cluster.overrides for d in o.between}
    groups: list[DeviceGroup] = []
    buckets: dict[tuple, list[str]] = {}
    order: list[tuple] = []
    for dev in cluster.device_ids():
        node = cluster.node_of(dev)
        spec = cluster.device(dev)
        key = (node, spec.model_dump_json()) if dev not in overridden else (node, dev)
        if key not in buckets:
            buckets[key] = []
            order.append(key)
        buckets[key].append(dev)
    for i, key in enumerate(order):
        devs = buckets[key]
        groups.append(
            DeviceGroup(i, cluster.node_of(devs[0]), cluster.device(devs[0]), tuple(devs))
        )
    return groups


def _ring_links(groups: list[DeviceGroup], ring: ReplicaRing | None) -> list[LinkSpec | None]:
    """Per group: the slowest all-reduce ring hop of its devices (None: one replica)."""
    if ring is None or ring.replicas < 2:
        return [None] * len(groups)
    out: list[LinkSpec | None] = []
    for g in groups:
        missing = [d for d in g.devices if d not in ring.links]
        if missing:
            raise ValueError(f"the replica ring has no link for device {missing[0]}")
        out.append(min((ring.links[d] for d in g.devices), key=lambda x: x.effective_bytes_per_s))
    return out


def _step_tails(
    groups: list[DeviceGroup],
    config: PlanConfig,
    ring: ReplicaRing | None,
    ring_links: list[LinkSpec | None],
    numel: int,
    tensors: int,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per group: (step tail, its collective part) for `numel` trainable parameters in
    `tensors` tensors: gradient all-reduce + optimizer step (1/r of it under ZeRO-1; the
    step's time is linear in parameters and tensors, `cost.optimizer`) + ZeRO-1 all-gather
    of the updated parameters (`cost.collectives`)."""
    if not config.training or numel <= 0:
        return (), ()
    r = ring.replicas if ring is not None else 1
    shards = ring.zero_shards if ring is not None else 1
    nbytes = numel * 4 * dtype_bytes_scale(config.dtype)  # gradients (and weights) at dtype
    tails, syncs = [], []
    for g, link in zip(groups, ring_links, strict=True):
        step = optimizer_step_seconds(g.spec, numel, tensors, config.optimizer) / shards
        sync = 0.0
        if link is not None:
            sync = ring_allreduce_seconds(nbytes, r, link, ring.bucket_bytes)
            if shards > 1:
                sync += ring_allgather_seconds(nbytes, r, link, ring.bucket_bytes)
        tails.append(step + sync)
        syncs.append(sync)
    return tuple(tails), tuple(syncs)


def _with_tensor_collectives(
    tp: TensorParallelGraph,
    nodes: list[str],
    fwd: tuple[float, ...],
    bwd: tuple[float, ...],
    links: list[LinkSpec],
    scale: float,
    training: bool,
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """A layer's per-group forward and backward with its tensor-parallel all-reduces added
    (each one message of the activation's bytes over the group's ring, Megatron's f and
    g), and those all-reduces alone."""
    t = tp.degree

    def reduce_s(nbytes: float, link: LinkSpec) -> float:
        return ring_allreduce_seconds(nbytes, t, link, max(int(nbytes), 1))

    def gather_s(nbytes: float, link: LinkSpec) -> float:
        return ring_allgather_seconds(nbytes, t, link, max(int(nbytes), 1))

    gathers = [tp.forward_gather_bytes.get(n, 0) * scale for n in nodes]
    fwd_bytes = [tp.forward_reduce_bytes.get(n, 0) * scale for n in nodes]
    bwd_bytes = [tp.backward_reduce_bytes.get(n, 0) * scale for n in nodes] if training else []
    f_comm = [
        sum(reduce_s(b, link) for b in fwd_bytes if b)
        + sum(gather_s(b, link) for b in gathers if b)
        for link in links
    ]
    b_comm = [sum(reduce_s(b, link) for b in bwd_bytes if b) for link in links]
    return (
        tuple(f + c for f, c in zip(fwd, f_comm, strict=True)),
        tuple(b + c for b, c in zip(bwd, b_comm, strict=True)),
        tuple(f + b for f, b in zip(f_comm, b_comm, strict=True)),
    )


def _flows(mg: ModelGraph, lg: LayerGraph, scale: float) -> dict[str, Flow]:
    """Every tensor crossing layers: its producer, consumers and bytes at the plan's dtype."""
    flows: dict[str, Flow] = {}
    consumers: dict[str, set[int]] = {}
    producers: dict[str, int] = {}
    for u, v, data in lg.dag.edges(data=True):
        for tensor in data["tensors"]:
            producers[tensor] = u
            consumers.setdefault(tensor, set()).add(v)
    for tensor, cons in consumers.items():
        info = mg.tensors.get(tensor)
        nbytes = info.nbytes if info is not None else 0
        is_float = bool(info is not None and info.is_float)
        flows[tensor] = Flow(
            tensor,
            producers[tensor],
            tuple(sorted(cons)),
            int(nbytes * scale) if is_float else nbytes,
            is_float,
        )
    return flows


def _group_links(cluster: Cluster, groups: list[DeviceGroup]) -> dict[tuple[int, int], LinkSpec]:
    """The link between devices of every two groups (within a group: two of its devices)."""
    links = {}
    for a in groups:
        for b in groups:
            if a.index == b.index:
                if len(a.devices) >= 2:
                    links[(a.index, b.index)] = cluster.link_between(a.devices[0], a.devices[1])
            else:
                links[(a.index, b.index)] = cluster.link_between(a.devices[0], b.devices[0])
    return links


def _cost_and_signature(mg: ModelGraph, tp: TensorParallelGraph | None, node: str):
    """A node's (cost, signature): a shard's cost is the roofline's (no profile holds it)."""
    if tp is not None and node in tp.costs:
        return tp.costs[node], None
    return mg.cost(node), mg.graph.nodes[node].get("signature")


def _activation_bytes(mg: ModelGraph, layer, tp: TensorParallelGraph | None) -> float:
    """What a layer keeps for backward per micro-batch on one device (1/t of a shard's)."""
    if tp is None:
        return layer.activation_bytes
    return sum(
        mg.tensors[x].nbytes / (tp.degree if x in tp.sharded_tensors else 1)
        for x in layer.saved
        if x in mg.tensors
    )


def build_problem(
    mg: ModelGraph,
    lg: LayerGraph,
    cluster: Cluster,
    config: PlanConfig,
    ring: ReplicaRing | None = None,
    tensor: TensorParallelGraph | None = None,
) -> Problem:
    """Price every layer on every device group; list inter-layer tensor flows.

    `ring`: this pipeline is one of `ring.replicas` data-parallel replicas: every layer's
    step tail then includes its gradients' all-reduce over the ring (and with ZeRO-1 its
    sharded step, the all-gather and the sharded optimizer state in memory).

    `tensor`: every device of `cluster` stands for a tensor-parallel group of
    `tensor.degree` devices of its node (`planner.parallel.tensor`): a layer costs what one
    device of the group runs (`planner.graph.shard_price`) plus the group's all-reduces on
    the node's link, and holds 1/t of its sharded weights, state and activations."""
    if cluster.num_devices < 1:
        raise PipeplanError("the cluster has no devices")
    groups = device_groups(cluster)
    ring_links = _ring_links(groups, ring)
    tp = tensor if tensor is not None and tensor.degree > 1 else None
    tp_links = [cluster.node(g.node).link for g in groups]

    def share(name: str) -> float:
        return 1.0 / tp.degree if tp is not None and name in tp.sharded_params else 1.0

    shards = ring.zero_shards if ring is not None else 1
    dtype = config.dtype
    scale = dtype_bytes_scale(dtype)
    per_param = bytes_per_param(
        dtype, config.optimizer, training=config.training, zero_shards=shards
    )
    param_layers: dict[str, list[int]] = {}
    for layer in lg.layers:
        for p in layer.params:
            param_layers.setdefault(p, []).append(layer.index)
    shared_names = {p for p, ls in param_layers.items() if len(ls) > 1}
    layers = []
    for layer in lg.layers:
        # (cost, signature) per node: a profiled device's measured times win (cost.roofline)
        costs = [_cost_and_signature(mg, tp, n) for n in layer.nodes]
        fwd = tuple(sum(forward_seconds(c, g.spec, dtype, sig) for c, sig in costs) for g in groups)
        bwd = tuple(
            sum(backward_seconds(c, g.spec, dtype, sig) for c, sig in costs) for g in groups
        )
        tensor_s: tuple[float, ...] = ()
        if tp is not None:
            fwd, bwd, tensor_s = _with_tensor_collectives(
                tp, layer.nodes, fwd, bwd, tp_links, scale, config.training
            )
        if config.recompute and config.training:
            # full recomputation: the stage's forward runs again just before its backward
            # (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"; Korthikanti
            # et al. 2022: one extra forward). It belongs to B, the input-gradient step that
            # needs the activations; W (weight gradients) follows and is unchanged.
            bwd = tuple(b + f for b, f in zip(bwd, fwd, strict=True))
        wgrad = tuple(
            sum(
                backward_seconds(c, g.spec, dtype, sig) * weight_grad_fraction(c)
                for c, sig in costs
            )
            for g in groups
        )
        own = [mg.params[p] for p in layer.params if p not in shared_names]
        state = sum(p.numel * per_param * share(p.name) for p in own if p.trainable)
        trainable = [p for p in own if p.trainable]
        step, sync = _step_tails(
            groups,
            config,
            ring,
            ring_links,
            int(sum(p.numel * share(p.name) for p in trainable)),
            len(trainable),
        )
        activations = _activation_bytes(mg, layer, tp)
        layers.append(
            LayerCost(
                index=layer.index,
                name=layer.name,
                forward_s=fwd,
                backward_s=bwd,
                weight_grad_s=wgrad,
                state_bytes=int(state),
                buffer_bytes=int(sum(p.nbytes for p in own if not p.trainable) * scale),
                activation_bytes=int(activations * scale),
                param_bytes=int(sum(p.nbytes * share(p.name) for p in own if p.trainable))
                if tp is not None
                else layer.param_bytes,
                optimizer_s=step,
                sync_s=sync,
                tensor_s=tensor_s,
            )
        )
    shared = []
    for name in sorted(shared_names):
        p = mg.params[name]
        state = p.numel * per_param if p.trainable else p.nbytes * scale
        step, sync = _step_tails(groups, config, ring, ring_links, p.numel if p.trainable else 0, 1)
        shared.append(SharedParam(name, tuple(param_layers[name]), int(state), step, sync))
    flows = _flows(mg, lg, scale)
    links = _group_links(cluster, groups)
    edges = sorted(lg.dag.edges())
    return Problem(
        layers,
        edges,
        sorted(flows.values(), key=lambda f: (f.producer, f.tensor)),
        shared,
        groups,
        cluster,
        config,
        links,
        ring,
        tp,
    )
