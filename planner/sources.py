"""Where a plan's predicted times come from, and how much of them each source covers.

Every operator a stage runs is priced from one of three sources (`cost.roofline`): its own
measured time in the device's calibration profile (`measured`), its family's fitted law
there (`family`, `cost.families`), or the roofline of the device's figures (`roofline`:
devices without a profile, operators whose family the profile did not fit, tensor-parallel
shards). `pricing_sources` counts the operators of each and their share of the predicted
compute time (forward + backward in training), and names the families a profiled device
lacked, so a user knows how much of a prediction rests on measurements; `in_model` gives
each profiled device's in-model cost per operator, added to the family and roofline prices.
"""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, Field

from cost.cluster import Cluster
from cost.families import family_of
from cost.profile import family_fit, in_model_fit, measured_op
from cost.roofline import backward_seconds, forward_seconds
from planner.graph.load import ModelGraph
from planner.plan_file import StagePlan

SOURCES = ("measured", "family", "roofline")


class PricingSources(BaseModel):
    """Operators per source and their share of the predicted compute time."""

    operators: dict[str, int] = Field(default_factory=dict, description="per source")
    share: dict[str, float] = Field(
        default_factory=dict, description="per source: fraction of predicted compute time"
    )
    missing_families: dict[str, int] = Field(
        default_factory=dict,
        description="families a profiled device has no fit for -> operators priced by the "
        "roofline instead",
    )
    in_model: dict[str, list[float]] = Field(
        default_factory=dict,
        description="device -> [forward, backward] us its profile adds to every operator "
        "priced by a family law or the roofline (runners.calibrate.in_model)",
    )


def pricing_sources(
    mg: ModelGraph,
    stages: list[StagePlan],
    cluster: Cluster,
    dtype: str,
    training: bool,
    shards: set[str] = frozenset(),
) -> PricingSources:
    """The sources of the stages' operator times on their devices (module docstring);
    `shards`: operators priced at a tensor-parallel shard's shapes (the roofline)."""
    ops: Counter = Counter()
    seconds: Counter = Counter()
    missing: Counter = Counter()
    costs: dict[str, list[float]] = {}
    for st in stages:
        device = cluster.device(st.device)
        fit = in_model_fit(device.profile)
        if fit is not None:
            costs[st.device] = [fit.forward_node_us, fit.backward_node_us]
        for node in st.nodes:
            cost = mg.cost(node)
            if cost.kind == "free":
                continue
            sig = None if node in shards else mg.graph.nodes[node].get("signature")
            if measured_op(device.profile, sig, dtype) is not None:
                source = "measured"
            elif family_fit(device.profile, sig, dtype) is not None and not cost.estimated:
                source = "family"
            else:
                source = "roofline"
                if device.profile and sig and family_of(sig):
                    missing[family_of(sig)] += 1
            t = forward_seconds(cost, device, dtype, sig)
            if training:
                t += backward_seconds(cost, device, dtype, sig)
            ops[source] += 1
            seconds[source] += t
    total = sum(seconds.values())
    return PricingSources(
        operators={s: ops[s] for s in SOURCES},
        share={s: (seconds[s] / total if total else 0.0) for s in SOURCES},
        missing_families=dict(sorted(missing.items())),
        in_model=costs,
    )


def missing_family_warnings(sources: PricingSources) -> list[str]:
    """One warning line per family a profiled device could not price."""
    return [
        f"the calibration profile has no fit for operator family {family} ({n} operator"
        f"{'s' if n > 1 else ''}): priced by the roofline (calibrate again to fit it)"
        for family, n in sources.missing_families.items()
    ]
