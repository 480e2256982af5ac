"""Export Llama-3-8B's architecture as a graph-only ONNX model: no weights materialised.

    python samples/export_llama8b.py out/llama8b/llama8b.onnx [--seq 2048] [--layers 32]
    pipeplan inspect out/llama8b/llama8b.onnx
    pipeplan plan out/llama8b/llama8b.onnx -c samples/clusters/h100x16.yaml --dtype bf16

The model is built from a transformers `LlamaConfig` with Llama-3-8B's sizes on the
``meta`` device, so its 8.03 B parameters take no memory; `exporters.from_torch.
export_weightless` traces it with fake tensors (`torch.onnx.export(dynamo=True,
optimize=False)`) and writes every weight as an external-data reference to a file that
is never written. Needs `transformers` (a test extra). Prints the module's parameter
count, to compare with `pipeplan inspect`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

#: Llama-3-8B (Meta, 2024): its published configuration.
LLAMA3_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


#: Llama-3-70B's published sizes (the rest as 8B's): `--size 70b`.
LLAMA3_70B = dict(
    hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64
)


def build_meta_llama(layers: int | None = None, **overrides):
    """`LlamaForCausalLM` with Llama-3-8B's config on the meta device (no memory)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sizes = LLAMA3_8B | ({"num_hidden_layers": layers} if layers else {}) | overrides
    config = LlamaConfig(**sizes, use_cache=False, attn_implementation="eager")
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return model.eval()


def logits_only(model):
    """Wrap a causal LM so that the export has one output, the logits."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.m = inner

        def forward(self, input_ids):
            return self.m(input_ids=input_ids, use_cache=False).logits

    return LogitsOnly(model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--seq", type=int, default=2048, help="sequence length (tokens)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--layers", type=int, default=None, help="override the 32 blocks")
    parser.add_argument(
        "--size", choices=["8b", "70b"], default="8b", help="70b: Llama-3-70B's sizes"
    )
    args = parser.parse_args(argv)

    import torch

    from exporters.from_torch import export_weightless

    args.output.parent.mkdir(parents=True, exist_ok=True)
    sizes = LLAMA3_70B if args.size == "70b" else {}
    model = logits_only(build_meta_llama(args.layers, **sizes))
    params = sum(p.numel() for p in model.parameters())
    ids = torch.zeros(args.batch, args.seq, dtype=torch.int64)
    started = time.perf_counter()
    export_weightless(model, (ids,), args.output, input_names=["input_ids"])
    print(
        f"{args.output}: {params:,} parameters (torch), exported in "
        f"{time.perf_counter() - started:.1f} s, {args.output.stat().st_size / 1e6:.0f} MB",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
