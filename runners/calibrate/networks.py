"""The calibrator's own networks: how much slower operators run inside a model.

An operator timed alone, or priced by its family's law (`runners.calibrate.families`), runs
warm: its inputs sit in cache and nothing else runs. Inside a model, and more so inside a
pipeline rank, the same operator runs slower (its inputs come from memory, allocations,
autograd bookkeeping, the converted graph's dispatch, the peer process and the
communication threads). A model calibrated with `--model` gets that correction for its own
operators; a model never calibrated needs it from somewhere else. So the calibrator times
two small networks of its own, a residual CNN with an inception-style branch and a
pre-norm transformer, exported by `torch.onnx.export` like any user's model, each sized
to a few milliseconds per micro-batch and unlike the shipped samples: their operators
alone, their whole model, and (with `--pipeline N`) their pipeline probe. What their
in-model time exceeds the sum of isolated times by, per operator, is their *in-model
cost*; `runners.calibrate.in_model` fits the device's figure over them and over every
model the profile holds, and `cost.roofline` adds it to every operator priced by a family
law or the roofline.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from planner.graph.shapes import ShapeBindings
from runners.calibrate.model_ops import ModelRequest

#: name -> (micro-batch size used to time it)
NETWORKS = {"calibration-cnn": 8, "calibration-transformer": 4}


def _cnn():
    import torch
    from torch import nn

    class Branch(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(c, c // 2, 1), nn.BatchNorm2d(c // 2), nn.ReLU())
            self.b = nn.Sequential(
                nn.Conv2d(c, c // 4, 1),
                nn.ReLU(),
                nn.Conv2d(c // 4, c // 2, 3, padding=1),
                nn.BatchNorm2d(c // 2),
                nn.ReLU(),
            )

        def forward(self, x):
            return torch.cat([self.a(x), self.b(x)], dim=1)

    class Residual(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(c, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
                nn.Conv2d(c, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
            )

        def forward(self, x):
            return torch.relu(x + self.body(x))

    return nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1),
        nn.BatchNorm2d(24),
        nn.ReLU(),
        Residual(24),
        nn.MaxPool2d(3, stride=2, padding=1),
        Branch(24),
        Residual(24),
        nn.Conv2d(24, 48, 3, stride=2, padding=1),
        nn.BatchNorm2d(48),
        nn.ReLU(),
        nn.Conv2d(48, 48, 3, padding=1, groups=48),
        nn.Conv2d(48, 48, 1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(48, 10),
    ), (3, 40, 40)


def _transformer():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, d: int, heads: int):
            super().__init__()
            self.heads = heads
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
            q, k, v = (
                z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v)
            )
            att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
            y = (att @ v).transpose(1, 2).reshape(b, t, d)
            x = x + self.proj(y)
            return x + self.down(nn.functional.gelu(self.up(self.ln2(x))))

    class Net(nn.Module):
        def __init__(self, d: int = 96, heads: int = 4, layers: int = 2):
            super().__init__()
            self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
            self.ln = nn.LayerNorm(d)
            self.head = nn.Linear(d, 160)

        def forward(self, x):
            return self.head(self.ln(self.blocks(x)))

    return Net(), (48, 96)


def export_networks(folder: str | Path) -> list[ModelRequest]:
    """Export the calibrator's networks (fixed seeds) into `folder`; one `ModelRequest` each,
    bound to its micro-batch size."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    requests = []
    for name, build in (("calibration-cnn", _cnn), ("calibration-transformer", _transformer)):
        torch.manual_seed(0)
        net, shape = build()
        net.eval()
        path = folder / f"{name}.onnx"
        example = torch.randn(2, *shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (example,),
                str(path),
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                opset_version=17,
                do_constant_folding=False,  # keep BatchNormalization apart from Conv
                dynamo=False,
            )
        requests.append(ModelRequest(str(path), ShapeBindings(batch=NETWORKS[name])))
    return requests
