"""Device classes: groups of devices that can swap roles without changing any cost.

Two device groups (`planner.partition.problem.DeviceGroup`) are *equivalent* when they
have the same spec and size and the same links, to each other and to every third group;
then exchanging them maps every plan onto one of the same price. The MILP breaks that
symmetry with ordered group counts (`ilp.formulation.add_symmetry`); the chain dynamic
programme (`chain_dp`) prices a class once instead of each of its groups.

Within a class, the link between two of its groups is one link whoever the pair is, and
so is the link from any group of one class to any group of another (equivalence makes
links agree on every third group), which is what lets a class stand for its groups.
"""

from __future__ import annotations

from dataclasses import dataclass

from cost.links import LinkSpec
from planner.partition.problem import Problem


@dataclass(frozen=True)
class DeviceClass:
    """Equivalent device groups (module docstring), `size` devices each."""

    index: int
    groups: tuple[int, ...]
    size: int

    @property
    def rep(self) -> int:
        """The group whose costs stand for the class."""
        return self.groups[0]

    @property
    def capacity(self) -> int:
        """Stages the class can hold at most (one per device)."""
        return self.size * len(self.groups)


def _equivalent(problem: Problem, g: int, h: int) -> bool:
    gs, links = problem.groups, problem.links
    a, b = gs[g], gs[h]
    if a.spec != b.spec or len(a.devices) != len(b.devices):
        return False
    if links.get((g, g)) != links.get((h, h)) or links.get((g, h)) != links.get((h, g)):
        return False
    return all(
        links[(g, k)] == links[(h, k)] and links[(k, g)] == links[(k, h)]
        for k in range(len(gs))
        if k not in (g, h)
    )


def equivalent_groups(problem: Problem) -> list[tuple[int, int]]:
    """Pairs of groups (g, h), g < h, that can swap roles without changing any cost."""
    n = len(problem.groups)
    return [(g, h) for g in range(n) for h in range(g + 1, n) if _equivalent(problem, g, h)]


def device_classes(problem: Problem) -> list[DeviceClass]:
    """Partition the groups into classes of pairwise equivalent groups, in group order."""
    members: list[list[int]] = []
    for g in range(len(problem.groups)):
        home = next(
            (c for c in members if all(_equivalent(problem, k, g) for k in c)),
            None,
        )
        if home is None:
            members.append([g])
        else:
            home.append(g)
    return [
        DeviceClass(i, tuple(c), len(problem.groups[c[0]].devices)) for i, c in enumerate(members)
    ]


def class_links(
    problem: Problem, classes: list[DeviceClass]
) -> tuple[list[LinkSpec | None], dict[tuple[int, int], LinkSpec]]:
    """The link inside one group of each class (None for one-device groups), and the link
    from a group of class c to another group of class d, for every (c, d) that has one."""
    inside = [problem.links.get((c.rep, c.rep)) for c in classes]
    between: dict[tuple[int, int], LinkSpec] = {}
    for c in classes:
        for d in classes:
            if c.index != d.index:
                between[(c.index, d.index)] = problem.links[(c.rep, d.rep)]
            elif len(c.groups) > 1:
                between[(c.index, c.index)] = problem.links[(c.groups[0], c.groups[1])]
    return inside, between
