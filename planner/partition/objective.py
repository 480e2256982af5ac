"""The pipeline cost model every strategy is judged by.

An `Assignment` puts each layer on a stage (0 = first) and each stage on a distinct
device. `evaluate` prices it, per micro-batch:

* **Stage compute** `T_s`: forward + backward time of its layers on its device
  (forward only for inference), from the roofline cost model, plus, over links whose host
  moves the bytes (gloo on CPUs), the time its own sends hold it
  (`LinkSpec.send_blocking_seconds`, per tensor: activations forward, gradients back).
* **Links**: a tensor produced on stage `s` and consumed on stage `t > s` is **relayed
  hop by hop** over the links `s -> s+1 -> ... -> t` (each intermediate stage forwards
  it; gradients come back the same way). So each stage talks only to its neighbours, as
  in GPipe and Megatron-LM, and a skip connection across k stage boundaries costs k
  transfers on k different links, which overlap with compute. Link time of boundary `s`:
  `K_s = sum over crossing tensors of (latency + bytes / (bandwidth x efficiency))`
  (alpha-beta model), `K^b_s` the same for the floating-point tensors whose gradients
  travel back.
* **Iteration time** (training, m micro-batches):
  `sum_s T_s + sum_s (K_s + K^b_s) + (m - 1) x max(max_s T_s, max_s K_s, max_s K^b_s)`:
  the first micro-batch's trip through the pipeline and back, then one slowest-resource
  period per further micro-batch (the form of PipeDream, Narayanan et al., SOSP 2019, and
  Alpa, Zheng et al., OSDI 2022, eq. 2). With equal stages and free links it gives
  GPipe's bubble fraction (p - 1) / (m + p - 1) exactly. Plus the **step tail** `max_s O_s`:
  the optimizer step over each stage's parameters (`cost.optimizer`), run once the
  pipeline has drained, the iteration waiting for the slowest device. When the pipeline
  is one of r data-parallel replicas, `O_s` also holds the ring all-reduce of the stage's
  gradients across replicas and, with ZeRO-1, the all-gather of its updated parameters
  (`cost.collectives`; `planner.partition.problem.build_problem`): counted after the
  drain here (conservative); the simulator starts each device's all-reduce when its own
  program ends, as the runner does, overlapping the drain of the stages before it.
* **Latency** (inference): `sum_s F_s + sum_s K_s`, one micro-batch through the pipeline.
* **Memory** per stage: weights, gradients and optimizer state of its parameters (a
  shared weight once per stage that uses it), buffers, and saved activations times the
  micro-batches in flight (GPipe: m; 1F1B and zero-bubble: min(p - s, m)); with
  recomputation, the stage's input per micro-batch in flight plus one micro-batch's full
  activations. A stage fits when that is at most capacity x (1 - headroom).
"""

from __future__ import annotations

from dataclasses import dataclass

from cost.memory import in_flight_microbatches
from planner.partition.problem import Problem


@dataclass(frozen=True)
class Assignment:
    """Layer -> stage (0-based, pipeline order) and stage -> device id."""

    stage_of_layer: tuple[int, ...]
    devices: tuple[str, ...]

    @property
    def num_stages(self) -> int:
        return len(self.devices)

    def layers_of(self, stage: int) -> list[int]:
        return [layer for layer, s in enumerate(self.stage_of_layer) if s == stage]


@dataclass(frozen=True)
class StageEval:
    index: int
    device: str
    group: int
    layers: tuple[int, ...]
    forward_s: float
    backward_s: float
    weight_grad_s: float  # part of backward_s (the W step of zero-bubble schedules)
    compute_s: float
    send_s: float  # activations to the next stage, per micro-batch
    grad_send_s: (
        float  # gradients arriving from the next stage, per micro-batch (link s -> s+1, reversed)
    )
    memory_bytes: int
    params_state_bytes: int
    activation_bytes: int
    capacity_bytes: int
    in_flight: int
    #: the step tail, once per iteration: the gradient all-reduce across data-parallel
    #: replicas, the optimizer step over the stage's parameters, ZeRO-1's all-gather
    optimizer_s: float = 0.0
    #: the collective part of `optimizer_s` (0 for a single pipeline)
    sync_s: float = 0.0
    #: per micro-batch: the stage held by its own sends over host-driven links
    #: (`LinkSpec.send_blocking_seconds`), in series with its compute
    send_blocking_s: float = 0.0
    #: per micro-batch, inside compute_s: its tensor-parallel group's all-reduces
    tensor_s: float = 0.0

    @property
    def occupied_s(self) -> float:
        """Per micro-batch: compute plus host-driven sends, the stage's period resource."""
        return self.compute_s + self.send_blocking_s

    @property
    def fits(self) -> bool:
        return self.memory_bytes <= self.capacity_bytes


@dataclass(frozen=True)
class Evaluation:
    stages: tuple[StageEval, ...]
    iteration_s: float
    bottleneck_s: float
    bottleneck: str  # "stage 2 compute", "link 1->2", "link 1->2 (gradients)"
    bubble_fraction: float
    routes: tuple[tuple[str, ...], ...]  # tensors crossing boundary s -> s+1

    @property
    def fits(self) -> bool:
        return all(s.fits for s in self.stages)

    @property
    def objective(self) -> float:
        return self.iteration_s


def check_assignment(problem: Problem, a: Assignment) -> None:
    """Raise ValueError unless `a` is structurally valid (used by tests and strategies)."""
    if len(a.stage_of_layer) != len(problem.layers):
        raise ValueError("every layer needs a stage")
    p = a.num_stages
    if sorted(set(a.stage_of_layer)) != list(range(p)):
        raise ValueError("stages must be 0..p-1, each non-empty")
    if len(set(a.devices)) != p:
        raise ValueError("each stage needs its own device")
    for d in a.devices:
        if d not in problem.group_of_device:
            raise ValueError(f"unknown device {d}")
    for u, v in problem.edges:
        if a.stage_of_layer[u] > a.stage_of_layer[v]:
            raise ValueError(f"layer {u} feeds layer {v} on an earlier stage")


def boundary_routes(problem: Problem, a: Assignment) -> list[list[int]]:
    """Indices into problem.flows of the tensors crossing each boundary s -> s+1."""
    p = a.num_stages
    routes: list[list[int]] = [[] for _ in range(max(p - 1, 0))]
    for i, flow in enumerate(problem.flows):
        src = a.stage_of_layer[flow.producer]
        last = max(a.stage_of_layer[c] for c in flow.consumers)
        for boundary in range(src, last):
            routes[boundary].append(i)
    return routes


def evaluate(problem: Problem, a: Assignment) -> Evaluation:
    """Price an assignment under the pipeline cost model (module docstring)."""
    cfg = problem.config
    training = problem.training
    m = cfg.microbatches
    p = a.num_stages
    groups = [problem.group_of_device[d] for d in a.devices]
    routes = boundary_routes(problem, a)
    flows = problem.flows
    send = [0.0] * p
    grad_send = [0.0] * p
    hold = [0.0] * p  # host-driven sends holding each stage, per micro-batch
    for s in range(p - 1):
        link = problem.link(groups[s], groups[s + 1])
        send[s] = sum(link.transfer_seconds(flows[i].nbytes) for i in routes[s])
        hold[s] += sum(link.send_blocking_seconds(flows[i].nbytes) for i in routes[s])
        if training:
            grad_send[s] = sum(
                link.transfer_seconds(flows[i].nbytes) for i in routes[s] if flows[i].is_float
            )
            back = problem.link(groups[s + 1], groups[s])
            hold[s + 1] += sum(
                back.send_blocking_seconds(flows[i].nbytes) for i in routes[s] if flows[i].is_float
            )
    stages = []
    schedule = cfg.pricing_schedule if training else "infer"
    for s in range(p):
        g = groups[s]
        layers = a.layers_of(s)
        fwd = sum(problem.layers[layer].forward_s[g] for layer in layers)
        bwd = sum(problem.layers[layer].backward_s[g] for layer in layers) if training else 0.0
        wgrad = sum(problem.layers[layer].weight_grad_s[g] for layer in layers) if training else 0.0
        layer_set = set(layers)
        state = sum(problem.layers[layer].state_bytes for layer in layers)
        state += sum(sp.state_bytes for sp in problem.shared if layer_set.intersection(sp.layers))
        buffers = sum(problem.layers[layer].buffer_bytes for layer in layers)
        optimizer = sum(
            problem.layers[layer].optimizer_s[g]
            for layer in layers
            if problem.layers[layer].optimizer_s
        ) + sum(
            sp.optimizer_s[g]
            for sp in problem.shared
            if sp.optimizer_s and layer_set.intersection(sp.layers)
        )
        sync = sum(
            problem.layers[layer].sync_s[g] for layer in layers if problem.layers[layer].sync_s
        ) + sum(
            sp.sync_s[g] for sp in problem.shared if sp.sync_s and layer_set.intersection(sp.layers)
        )
        acts_one = sum(problem.layers[layer].activation_bytes for layer in layers)
        flight = in_flight_microbatches(schedule, s, p, m) if training else 1
        if training and cfg.recompute:
            inputs = sum(flows[i].nbytes for i in routes[s - 1]) if s > 0 else 0
            acts = flight * inputs + acts_one
        else:
            acts = flight * acts_one
        stages.append(
            StageEval(
                index=s,
                device=a.devices[s],
                group=g,
                layers=tuple(layers),
                forward_s=fwd,
                backward_s=bwd,
                weight_grad_s=wgrad,
                compute_s=fwd + bwd,
                send_s=send[s],
                grad_send_s=grad_send[s],
                memory_bytes=int(state + buffers + acts),
                params_state_bytes=int(state + buffers),
                activation_bytes=int(acts),
                capacity_bytes=int(problem.capacity(g)),
                in_flight=flight,
                optimizer_s=optimizer,
                sync_s=sync,
                send_blocking_s=hold[s],
                tensor_s=sum(
                    problem.layers[layer].tensor_s[g]
                    for layer in layers
                    if problem.layers[layer].tensor_s
                ),
            )
        )
    resources = [(st.occupied_s, f"stage {st.index} compute") for st in stages]
    resources += [(send[s], f"link {s}->{s + 1}") for s in range(p - 1)]
    if training:
        resources += [(grad_send[s], f"link {s + 1}->{s} (gradients)") for s in range(p - 1)]
    bottleneck_s, bottleneck = max(resources, key=lambda r: r[0])
    fill = sum(st.occupied_s for st in stages) + sum(send) + sum(grad_send)
    iteration = fill if cfg.objective == "latency" else fill + (m - 1) * bottleneck_s
    tail: dict[str, float] = {}
    for st in stages:
        tail[st.device] = tail.get(st.device, 0.0) + st.optimizer_s
    iteration += max(tail.values(), default=0.0)  # the optimizer step after the drain
    busy = (
        sum(m * st.compute_s for st in stages)
        if cfg.objective != "latency"
        else sum(st.compute_s for st in stages)
    )
    busy += sum(tail.values())  # the optimizer step is work, not bubble
    bubble = 1.0 - busy / (p * iteration) if iteration > 0 else 0.0
    names = tuple(tuple(flows[i].tensor for i in c) for c in routes)
    return Evaluation(tuple(stages), iteration, bottleneck_s, bottleneck, bubble, names)
