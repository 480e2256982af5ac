"""Sample models for the pipeline planner.

Small, deterministic ``torch.nn.Module`` definitions whose ONNX exports live in
``samples/models``. Module attribute names are chosen so that the exporters'
name scopes are meaningful (``layers.0``, ``blocks.3.attn``, ``layer2.1`` ...):
the planner groups operators into layers from those scopes.

Entry point::

    model, example_inputs = build("gpt", seed=0)

Models:

* ``mlp``       -- 6 Linear layers, [batch, 64] -> [batch, 10]
* ``gpt``       -- nanoGPT-style decoder, token ids [batch, 32] -> logits [batch, 32, 128]
* ``resnet``    -- small CIFAR-style ResNet, [batch, 3, 32, 32] -> [batch, 10]
* ``inception`` -- branchy Inception-style CNN, [batch, 3, 32, 32] -> [batch, 10]
* ``gpt_xl``    -- the GPT class with GPT-2 XL dimensions (~1.56 B parameters), token ids
                   [batch, 1024]; build it with ``device="meta"`` unless you really
                   want 6 GB of weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# MLP


class MLP(nn.Module):
    """A plain stack of Linear layers with alternating ReLU / GELU activations.

    ``layers.0`` ... ``layers.5`` are the Linear layers; activations live in
    ``acts.0`` ... ``acts.4`` so every operator has a module scope.
    """

    def __init__(
        self, d_in: int = 64, d_hidden: int = 128, d_out: int = 10, n_layers: int = 6
    ) -> None:
        super().__init__()
        dims = [d_in] + [d_hidden] * (n_layers - 1) + [d_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(dims))
        self.acts = nn.ModuleList(
            nn.ReLU() if i % 2 == 0 else nn.GELU() for i in range(n_layers - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.acts):
                x = self.acts[i](x)
        return x


# -----------------------------------------------------------------------------
# GPT (nanoGPT layout)


@dataclass
class GPTConfig:
    block_size: int = 32
    vocab_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with plain matmul / masked_fill / softmax.

    ``scaled_dot_product_attention`` is deliberately not used, so the exported
    graph only contains common ops (MatMul, Softmax, Where, ...).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        # query, key, value projections for all heads, in one batch
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        # output projection
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        # causal mask: True above the diagonal (positions that must not be attended)
        mask = torch.ones(config.block_size, config.block_size, dtype=torch.bool).triu(1)
        self.register_buffer("mask", mask.view(1, 1, config.block_size, config.block_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()  # batch, sequence length, embedding dim
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, T, T)
        att = att.masked_fill(self.mask[:, :, :T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)
        y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class GPTMLP(nn.Module):
    """Position-wise feed-forward: Linear -> GELU -> Linear."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block with residual connections."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = GPTMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """GPT-style decoder: token ids [B, T] -> logits [B, T, vocab].

    The language-model head shares its weight with the token embedding
    (``lm_head.weight is wte.weight``), as in GPT-2.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return self.lm_head(x)


# -----------------------------------------------------------------------------
# ResNet


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm; 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class ResNet(nn.Module):
    """CIFAR-style ResNet: stem, ``layer1..layer3`` of BasicBlocks, pool, fc."""

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64),
        blocks_per_layer: int = 2,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        c_in = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(c_in, w, stride)]
            blocks += [BasicBlock(w, w) for _ in range(blocks_per_layer - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = w
        self.n_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = self.avgpool(x).flatten(1)
        return self.fc(x)


# -----------------------------------------------------------------------------
# Inception


class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU, the Inception building brick."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        )


class InceptionModule(nn.Module):
    """Four parallel branches concatenated on channels.

    * ``branch1``: 1x1
    * ``branch2``: 1x1 -> 3x3
    * ``branch3``: 1x1 -> 3x3 -> 3x3 (the factorised 5x5)
    * ``branch4``: 3x3 maxpool -> 1x1
    """

    def __init__(
        self, c_in: int, c1: int, c3_red: int, c3: int, c5_red: int, c5: int, c_pool: int
    ) -> None:
        super().__init__()
        self.branch1 = ConvBNReLU(c_in, c1, 1)
        self.branch2 = nn.Sequential(ConvBNReLU(c_in, c3_red, 1), ConvBNReLU(c3_red, c3, 3))
        self.branch3 = nn.Sequential(
            ConvBNReLU(c_in, c5_red, 1), ConvBNReLU(c5_red, c5, 3), ConvBNReLU(c5, c5, 3)
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), ConvBNReLU(c_in, c_pool, 1)
        )
        self.out_channels = c1 + c3 + c5 + c_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, dim=1)


class Inception(nn.Module):
    """Stem, three Inception modules (a maxpool between the 2nd and 3rd), pool, fc."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvBNReLU(3, 32, 3), ConvBNReLU(32, 32, 3, stride=2))
        self.inception1 = InceptionModule(32, 16, 16, 24, 8, 12, 12)  # -> 64 ch, 16x16
        self.inception2 = InceptionModule(64, 24, 24, 32, 12, 16, 16)  # -> 88 ch, 16x16
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)  # -> 8x8
        self.inception3 = InceptionModule(88, 32, 32, 48, 16, 24, 24)  # -> 128 ch, 8x8
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.inception3.out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.inception1(x)
        x = self.inception2(x)
        x = self.pool(x)
        x = self.inception3(x)
        x = self.avgpool(x).flatten(1)
        return self.fc(x)


# -----------------------------------------------------------------------------
# Registry and seeded construction

GPT_SMALL = GPTConfig(block_size=32, vocab_size=128, n_layer=4, n_head=4, n_embd=64)
GPT_XL = GPTConfig(block_size=1024, vocab_size=50257, n_layer=48, n_head=25, n_embd=1600)

# input factory: (batch, generator) -> tuple of example inputs
_InputFactory = Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]


def _image_inputs(batch: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    return (torch.randn(batch, 3, 32, 32, generator=gen),)


def _token_inputs(config: GPTConfig, seq_len: int) -> _InputFactory:
    def make(batch: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        return (torch.randint(0, config.vocab_size, (batch, seq_len), generator=gen),)

    return make


# name -> (constructor, input factory)
_REGISTRY: dict[str, tuple[Callable[[], nn.Module], _InputFactory]] = {
    "mlp": (MLP, lambda b, g: (torch.randn(b, 64, generator=g),)),
    "gpt": (lambda: GPT(GPT_SMALL), _token_inputs(GPT_SMALL, 32)),
    "resnet": (ResNet, _image_inputs),
    "inception": (Inception, _image_inputs),
    # full context: the planner sees GPT-2 XL training activations at seq len 1024
    "gpt_xl": (lambda: GPT(GPT_XL), _token_inputs(GPT_XL, GPT_XL.block_size)),
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)
SMALL_MODELS: tuple[str, ...] = ("mlp", "gpt", "resnet", "inception")


def _randomize_batchnorm(module: nn.Module, gen: torch.Generator) -> None:
    """Give BatchNorm layers non-trivial running stats and affine params.

    Freshly built BN layers are identities in eval mode (mean 0, var 1,
    weight 1, bias 0); random values make the numerical tests meaningful.
    """
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))


def example_inputs(
    name: str, batch: int = 2, seed: int = 0, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, ...]:
    """Seeded example inputs for ``name`` with the given batch size."""
    gen = torch.Generator().manual_seed(seed)
    inputs = _REGISTRY[name][1](batch, gen)
    return tuple(t.to(device) for t in inputs)


def build(
    name: str, seed: int = 0, batch: int = 2, device: str | torch.device = "cpu"
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Build sample model ``name`` deterministically, in eval mode.

    Returns ``(module, example_inputs)``. The same ``seed`` always gives the
    same weights and the same inputs. With ``device="meta"`` no memory is
    allocated for the weights (use this for ``gpt_xl``); inputs are then meta
    tensors too.
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown sample model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    ctor, _ = _REGISTRY[name]
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)  # local to this block: the global RNG is left untouched
        model = ctor()
    if torch.device(device).type != "meta":
        _randomize_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    model.eval()
    return model, example_inputs(name, batch=batch, seed=seed, device=device)


def num_parameters(model: nn.Module) -> int:
    """Unique parameter count (tied weights count once)."""
    return sum(p.numel() for p in model.parameters())
