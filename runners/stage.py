"""One pipeline stage in a rank: its converted module and the autograd state per micro-batch.

Backward comes in two halves, as zero-bubble schedules need them (Qi et al., ICLR 2024):
`backward_input` (B) computes the gradients of the stage's inputs, keeping the graph;
`backward_weight` (W) then computes the parameters' gradients. Schedules that do not split
backward call `backward` (both at once).

With `recompute` (the plan's `--recompute`), the stage's forward runs under
`torch.utils.checkpoint` (non-reentrant): only the stage's inputs are kept per micro-batch,
and the forward runs again when its backward starts (Chen et al. 2016), as the planner
prices it. Zero-bubble schedules are refused with recomputation (planner.api): their W
pass would recompute once more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from exporters.manifest import StageFile


@dataclass
class Saved:
    inputs: dict[str, torch.Tensor]  # leaves that require grad (float inputs from other stages)
    roots: list[torch.Tensor] = field(
        default_factory=list
    )  # outputs (or the loss) to differentiate
    grads: list[torch.Tensor | None] = field(default_factory=list)


class StageRunner:
    def __init__(
        self,
        spec: StageFile,
        module: torch.fx.GraphModule,
        training: bool,
        *,
        recompute: bool = False,
    ):
        self.spec = spec
        self.module = module
        self.training = training
        self.recompute = recompute and training
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.saved: dict[int, Saved] = {}

    @property
    def index(self) -> int:
        return self.spec.index

    def forward(self, microbatch: int, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the stage; float inputs from other stages become leaves for their gradients."""
        args, leaves = [], {}
        for t in self.spec.inputs:
            value = feed[t.name]
            if self.training and t.source != "graph" and value.is_floating_point():
                value = value.detach().requires_grad_(True)
                leaves[t.name] = value
            args.append(value)
        with torch.set_grad_enabled(self.training):
            if self.recompute:
                outs = checkpoint(self.module, *args, use_reentrant=False)
            else:
                outs = self.module(*args)
        result = dict(zip((o.name for o in self.spec.outputs), outs, strict=True))
        if self.training:
            self.saved[microbatch] = Saved(inputs=leaves)
        return result

    def set_roots(
        self, microbatch: int, roots: list[torch.Tensor], grads: list[torch.Tensor | None]
    ) -> None:
        saved = self.saved[microbatch]
        saved.roots, saved.grads = roots, grads

    def _run(self, microbatch: int, inputs: list[torch.Tensor], retain: bool) -> None:
        saved = self.saved[microbatch]
        pairs = [(r, g) for r, g in zip(saved.roots, saved.grads, strict=True) if r.requires_grad]
        if not pairs or not inputs:
            return
        torch.autograd.backward(
            [r for r, _ in pairs], [g for _, g in pairs], inputs=inputs, retain_graph=retain
        )

    def backward_input(self, microbatch: int) -> dict[str, torch.Tensor]:
        """B: gradients of this stage's inputs (the graph is kept for W)."""
        saved = self.saved[microbatch]
        self._run(microbatch, list(saved.inputs.values()), retain=True)
        return {name: leaf.grad for name, leaf in saved.inputs.items() if leaf.grad is not None}

    def backward_weight(self, microbatch: int) -> None:
        """W: accumulate the parameters' gradients, then free the micro-batch."""
        self._run(microbatch, self.params, retain=False)
        del self.saved[microbatch]

    def backward(self, microbatch: int) -> dict[str, torch.Tensor]:
        """B and W at once."""
        saved = self.saved[microbatch]
        self._run(microbatch, list(saved.inputs.values()) + self.params, retain=False)
        grads = {name: leaf.grad for name, leaf in saved.inputs.items() if leaf.grad is not None}
        del self.saved[microbatch]
        return grads
