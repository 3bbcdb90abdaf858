"""How fast does one organism training step run, and what would make it faster?

The shipped organism's shape (4 layers, hidden 256, head_dim 16, 4 KV heads, MLP 512,
vocab 3072, tied embeddings) with 16 query heads a layer (64 heads, as shipped) and with
32 (128 heads, so that 5 % of heads is 6), one AdamW step (forward, loss on every token,
backward, update) on random token ids, float32, at two batch shapes of the training
curriculum: 4 x 256 tokens and 2 x 1024 tokens. Three ways to run the step, each timed side
by side (interleaved, median of ``--reps``) in one process:

- ``eager``: as ``organism train`` runs it;
- ``bf16``: the forward under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the CPU has
  AVX512-BF16 where this was measured; AdamW still updates float32 weights);
- ``compiled``: ``torch.compile(model, dynamic=True)`` (compile time reported apart).

    python benchmarks/organism_step_speed.py [--threads 2] [--reps 6] [--no-compile]

Prints seconds per step and the ratios eager/bf16, eager/compiled and 128/64 heads.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = ((4, 256), (2, 1024))  # (batch, tokens)


def make_model(heads: int) -> LlamaForCausalLM:
    """A random-init organism-shaped Llama with ``heads`` query heads a layer."""
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=3072, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=heads, num_key_value_heads=4, head_dim=16, tie_word_embeddings=True,
    ))


def timed_step(model, opt, ids: torch.Tensor, bf16: bool) -> float:
    """Seconds for one training step."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    eager_s: dict[tuple[int, int, int], float] = {}
    for heads in (16, 32):
        model = make_model(heads)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        runners = {"eager": (model, False), "bf16": (model, True)}
        if not args.no_compile:
            compiled = torch.compile(model, dynamic=True)
            ids = torch.randint(0, 3072, SHAPES[0])
            first = timed_step(compiled, opt, ids, False)
            print(f"{4 * heads} heads: torch.compile's first step (compiling) {first:.1f} s")
            runners["compiled"] = (compiled, False)
        for batch, tokens in SHAPES:
            ids = torch.randint(0, 3072, (batch, tokens))
            for m, bf16 in runners.values():  # warm-up (a compiled model may specialise once more)
                timed_step(m, opt, ids, bf16)
            times: dict[str, list[float]] = {name: [] for name in runners}
            for _ in range(args.reps):
                for name, (m, bf16) in runners.items():
                    times[name].append(timed_step(m, opt, ids, bf16))
            med = {name: statistics.median(t) for name, t in times.items()}
            eager_s[(heads, batch, tokens)] = med["eager"]
            cells = "  ".join(f"{name} {s:.3f} s" for name, s in med.items())
            ratios = "  ".join(f"eager/{name} {med['eager'] / s:.2f}x" for name, s in med.items() if name != "eager")
            print(f"{4 * heads} heads, {batch} x {tokens} tokens: {cells}  |  {ratios}")
    for batch, tokens in SHAPES:
        ratio = eager_s[(32, batch, tokens)] / eager_s[(16, batch, tokens)]
        print(f"128 vs 64 heads, {batch} x {tokens} tokens, eager: {ratio:.2f}x the time per step")


if __name__ == "__main__":
    main()
