"""A corpus of models nobody here wrote, exported as their users export them.

transformers' `LlamaForCausalLM`, `BertModel` and `GPT2LMHeadModel` (small random-init
configs, no download) and timm's `vit_small_patch16_224`, `convnext_tiny`,
`efficientnet_b0` and `resnet50` (`pretrained=False`, 32x32 inputs so that CPU runs stay
short; ViT built with `img_size=32`), each exported by both torch exporters with the
settings that keep the model's parameters as torch has them (the recipe of the README's
"Exporting a model for training"):

* dynamo: `torch.onnx.export(model, args, dynamo=True, optimize=False)`. The default
  `optimize=True` rewrites parameters: it folds `Transpose(W)` and constant-index
  `Gather(embedding)` into anonymous constants (a tied head untied, a position embedding
  cut to the rows one input uses) and BatchNorm into Conv.
* TorchScript: `torch.onnx.export(model, args, dynamo=False, do_constant_folding=False)`.
  Constant folding does the same folds. Both exporters still merge equal initializers;
  pipeplan separates those again (`planner.graph.aliases`).

Language models get `attention_mask=ones` inside the wrapper (the graph's one input is
the token ids), as the TorchScript exporter cannot trace transformers' mask detection
(`aten::diff`) otherwise; outputs are the logits (`last_hidden_state` for BERT, built
without its pooler so that every parameter is used).

timm imports torchvision at import time (data transforms, `FrozenBatchNorm2d`), and
PyPI's torchvision wheels are CUDA builds that cannot load beside the CPU torch this
project installs: where torchvision does not import, `timm_importable` provides those
names (a real `FrozenBatchNorm2d`, `InterpolationMode`, and placeholders that raise if
data loading is ever used). No model built here uses them.
"""

from __future__ import annotations

import enum
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from exporters.from_torch import export_for_training

LANGUAGE = ("llama", "bert", "gpt2")
VISION = ("vit_small_patch16_224", "convnext_tiny", "efficientnet_b0", "resnet50")
MODELS = (*LANGUAGE, *VISION)
EXPORTERS = ("dynamo", "torchscript")
BATCH = 2
SEQUENCE = 16
IMAGE = 32


@dataclass
class Built:
    """A corpus model, ready to export and to compare with."""

    name: str
    module: torch.nn.Module  # eval mode; its forward takes the one graph input
    example: tuple[torch.Tensor, ...]
    torch_params: int  # sum(p.numel() for p in parameters()), ties once
    #: float buffers other than BatchNorm statistics, by name (the TorchScript exporter
    #: records no tensor kinds: one it writes and the graph reads as data counts as a weight)
    float_buffers: dict[str, int]


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.m = model

    def forward(self, x):
        text = x.dtype == torch.int64
        out = self.m(x, attention_mask=torch.ones_like(x)) if text else self.m(x)
        for field in ("logits", "last_hidden_state"):
            if hasattr(out, field):
                return getattr(out, field)
        return out


def _language(name: str) -> torch.nn.Module:
    import transformers as T

    common = dict(attn_implementation="eager")
    if name == "llama":
        config = T.LlamaConfig(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            **common,
        )
        return T.LlamaForCausalLM(config)
    if name == "bert":
        config = T.BertConfig(
            vocab_size=256,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
            **common,
        )
        return T.BertModel(config, add_pooling_layer=False)
    config = T.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=64, **common)
    return T.GPT2LMHeadModel(config)


def build(name: str, seed: int = 0) -> Built:
    """The corpus model `name`, random-init under `seed`."""
    torch.manual_seed(seed)
    if name in LANGUAGE:
        model = _language(name)
        model.config.use_cache = False
        example = (torch.randint(0, 256, (BATCH, SEQUENCE)),)
    else:
        timm_importable()
        import timm

        extra = {"img_size": IMAGE} if name.startswith("vit") else {}
        model = timm.create_model(name, pretrained=False, **extra)
        example = (torch.randn(BATCH, 3, IMAGE, IMAGE),)
    model.eval()
    buffers = {
        f"m.{n}": b.numel()
        for n, b in model.named_buffers()
        if b.is_floating_point() and not n.endswith(("running_mean", "running_var"))
    }
    params = sum(p.numel() for p in model.parameters())
    return Built(name, _Logits(model).eval(), example, params, buffers)


def export(built: Built, exporter: str, path: Path) -> Path:
    """Export `built` with `exporter`'s training recipe (module docstring), through
    `exporters.from_torch.export_for_training`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_for_training(
            built.module,
            built.example,
            path,
            dynamo=exporter == "dynamo",
            input_names=["x"],
            output_names=["y"],
            batch_range=(1, 64),
        )


def torch_flops(built: Built) -> int:
    """Forward FLOPs as `torch.utils.flop_counter` counts them (matmul and conv)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        built.module(*built.example)
    return counter.get_total_flops()


# ---------------------------------------------------------------------- timm's imports


class _MissingMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (_Missing,), {})


class _Missing(metaclass=_MissingMeta):
    """A torchvision name timm imports but never uses to build a model."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision is not installed: timm's data loading is unavailable")


class _Module(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (_Missing,), {})


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


class FrozenBatchNorm2d(torch.nn.Module):
    """BatchNorm with fixed statistics and affine parameters (torchvision's definition)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class _TorchvisionNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Module(spec.name)

    def exec_module(self, module):
        module.__path__ = []
        if module.__name__ == "torchvision.ops.misc":
            module.FrozenBatchNorm2d = FrozenBatchNorm2d
        if module.__name__ in ("torchvision.transforms", "torchvision.transforms.functional"):
            module.InterpolationMode = InterpolationMode


def timm_importable() -> None:
    """Make `import timm` work where torchvision cannot be imported (module docstring)."""
    if any(isinstance(f, _TorchvisionNames) for f in sys.meta_path):
        return
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or a CUDA build beside a CPU torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _TorchvisionNames())
