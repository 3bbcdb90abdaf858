"""How fast is detection? The reference algorithm vs this project's greedy and teacher modes vs a plain forward.

A random-init Llama (8 layers, hidden 512, 8 heads / 2 KV heads, vocab 4096)
and one prompt grid of token ids (lengths 1K, 2K, 4K x 3 depths), batch 1,
float32. The needle's answer span holds 20 random tokens; every decoding
variant runs exactly 20 steps (no stop token), and teacher forcing scores the
20 answer rows, so all variants do the same amount of scoring.

Variants (each length of each variant in its own subprocess, so that the peak
RSS, ``ru_maxrss``, is its own):

- ``reference``: the reference code's algorithm: greedy decoding with eager
  attention and ``output_attentions=True`` at every step (prefill included:
  there is no flash attention on CPU), the full attention maps returned, and a
  Python loop over layers and heads with a ``.item()`` per head per step.
- ``reference-sdpa-prefill``: the same, but the prefill runs SDPA without maps
  (what the reference does on a GPU with flash attention); decode steps eager.
- ``greedy``: :func:`retrieval_heads.detect.greedy_batch` (capture, KV cache, vectorised events).
- ``teacher``: :func:`retrieval_heads.detect.teacher_batch` (one forward over prompt + answer).
- ``sdpa-forward``: one plain SDPA forward of the prompt (``logits_to_keep=1``): the floor.

    python benchmarks/detect_speed.py [--lengths 1024,2048,4096] [--depths 0.1,0.5,0.9] [--steps 20]

Prints seconds per prompt, ratios and peak RSS growth (MiB above the baseline after loading).
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import resource
import subprocess
import sys
import time

VOCAB = 4096
VARIANTS = ("reference", "reference-sdpa-prefill", "greedy", "teacher", "sdpa-forward")


def build_model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=16384,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.set_attn_implementation("sdpa")
    return model


def make_prompt(length: int, depth: float, answer_len: int, seed: int) -> tuple[list[int], tuple[int, int]]:
    """Random token ids with a needle answer span of ``answer_len`` tokens at ``depth``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (length,), generator=g).tolist()
    start = min(int(depth * (length - answer_len)), length - answer_len - 1)
    return ids, (start, start + answer_len)


def reference_detect(model, ids: list[int], span: tuple[int, int], steps: int, sdpa_prefill: bool) -> list[list[float]]:
    """The reference algorithm: eager maps at every step and a host sync per head."""
    import torch

    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    scores = [[0.0] * n_heads for _ in range(n_layers)]
    start, end = span
    seq = torch.tensor([ids])
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def cache_of(output):
        cache = output.get("cache")
        return cache if cache is not None else output.get("past_key_values")

    if sdpa_prefill:  # flash-attention prefill without maps, then the last token through eager
        model.set_attn_implementation("sdpa")
        out = model(seq[:, :-1], use_cache=True, logits_to_keep=1)
        model.set_attn_implementation("eager")
        out = model(seq[:, -1:], use_cache=True, output_attentions=True, **{cache_kw: cache_of(out)})
    else:
        model.set_attn_implementation("eager")
        out = model(seq, use_cache=True, output_attentions=True, logits_to_keep=1)
    for _ in range(steps):
        token = out.logits[0, -1].argmax()
        token_id = token.item()
        for layer in range(n_layers):
            for head in range(n_heads):
                _, idx = out.attentions[layer][0][head][-1].topk(1)
                i = idx.item()  # one host sync per head per step
                if start <= i < end and ids[i] == token_id:
                    scores[layer][head] += 1 / (end - start)
        out = model(token[None, None], use_cache=True, output_attentions=True, **{cache_kw: cache_of(out)})
    model.set_attn_implementation("sdpa")
    return scores


def run_variant(variant: str, length: int, depths: list[float], steps: int, threads: int) -> dict:
    import torch

    from retrieval_heads.detect import StopTokens, greedy_batch, teacher_batch

    torch.set_num_threads(threads)
    model = build_model()
    none = torch.zeros(VOCAB, dtype=torch.bool)
    stops = StopTokens(none, none, none)  # no stop token: every variant decodes `steps` tokens
    prompts = [make_prompt(length, d, steps, seed=k) for k, d in enumerate(depths)]

    def once(ids: list[int], span: tuple[int, int]) -> None:
        if variant == "reference":
            reference_detect(model, ids, span, steps, sdpa_prefill=False)
        elif variant == "reference-sdpa-prefill":
            reference_detect(model, ids, span, steps, sdpa_prefill=True)
        elif variant == "greedy":
            greedy_batch(model, [ids], [span], steps, stops)
        elif variant == "teacher":
            teacher_batch(model, [ids], [span])
        elif variant == "sdpa-forward":
            model(torch.tensor([ids]), logits_to_keep=1)

    with torch.no_grad():
        once(*make_prompt(128, 0.5, steps, seed=99))  # warm-up, not timed
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times = []
        for ids, span in prompts:
            t0 = time.perf_counter()
            once(ids, span)
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": sum(times) / len(times), "peak_mib": (peak - base_rss) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="1024,2048,4096")
    parser.add_argument("--depths", default="0.1,0.5,0.9")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per variant process (1: stable on a shared CPU)")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    depths = [float(x) for x in args.depths.split(",")]
    if args.child:
        print(json.dumps(run_variant(args.child[0], int(args.child[1]), depths, args.steps, args.threads)))
        return
    import torch
    import transformers

    lengths = [int(x) for x in args.lengths.split(",")]
    print(f"# detect speed: {len(depths)} depths x {args.steps} scored steps; {platform.machine()}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads", flush=True)
    header = "| tokens | " + " | ".join(f"{v} s" for v in VARIANTS)
    header += " | ref/teacher | ref/greedy | teacher/forward | greedy/forward | " + " | ".join(f"{v} MiB" for v in VARIANTS) + " |"
    print(header)
    print("|" + "---|" * (1 + 2 * len(VARIANTS) + 4))
    started = time.time()
    for length in lengths:
        res = {}
        for variant in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--child", variant, str(length), "--depths", args.depths,
                 "--steps", str(args.steps), "--threads", str(args.threads)],
                capture_output=True, text=True, check=True,
            )
            res[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        s = {v: res[v]["seconds"] for v in VARIANTS}
        row = [str(length), *(f"{s[v]:.3f}" for v in VARIANTS),
               f"{s['reference'] / s['teacher']:.1f}x", f"{s['reference'] / s['greedy']:.1f}x",
               f"{s['teacher'] / s['sdpa-forward']:.2f}x", f"{s['greedy'] / s['sdpa-forward']:.2f}x",
               *(f"{res[v]['peak_mib']:.0f}" for v in VARIANTS)]
        print("| " + " | ".join(row) + " |", flush=True)
    print(f"# total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
