"""KV-cache memory and time per generated token: the compressed cache (retrieval KV heads whole) vs the full cache.

One model (the built-in organism by default), one prompt of random token ids
per length, batch 1, float32, greedy decoding of ``--steps`` tokens with no
stop token (every variant does the same work). Variants, each length of each
variant in its own subprocess so that its peak RSS (``ru_maxrss``) is its own:

- ``full``: transformers' ``DynamicCache`` (the normal cache);
- ``compressed``: :class:`headatlas.kvcache.HeadSplitCache` keeping whole
  only the KV heads that hold the top-K heads of ``--heads`` (or ``--keep``:
  ``L.G,L.G`` KV heads), every other KV head a sink + window.

    python benchmarks/kv_cache_memory.py [--model organism] [--heads FILE | --keep 3.3] [--lengths 1024,2000]
        [--sink 4] [--window 64] [--steps 32] [--chunk 256]

Prints, side by side: cache bytes after the prompt and at the end (the tensors
actually stored), prefill seconds, ms per generated token, and peak RSS
growth over the loaded model.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _stored(cache) -> int:  # noqa: ANN001 - any transformers Cache
    if hasattr(cache, "stored_bytes"):
        return cache.stored_bytes()
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
               if t is not None)


def one(args: argparse.Namespace, variant: str, length: int) -> dict:
    import torch
    from transformers import DynamicCache

    from headatlas.heads import HeadScores
    from headatlas.kvcache import (
        HeadSplitCache,
        KVHead,
        compressed_attention,
        full_per_layer,
        kv_heads_of,
    )
    from headatlas.model_spec import load_model
    from headatlas.selection import share_of_heads

    torch.set_num_threads(1)
    model, _tok, spec = load_model(args.model, dtype="float32", device="cpu")
    if args.keep:
        kv = [KVHead(*map(int, s.split("."))) for s in args.keep.split(",")]
    else:
        kv = kv_heads_of(HeadScores.load(args.heads).top_k(share_of_heads(spec.n_total_heads)), spec.n_heads,
                         spec.n_kv_heads)
    ids = torch.randint(3, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    base_rss = _rss_mib()
    if variant == "full":
        cache, ctx = DynamicCache(config=model.config), torch.no_grad()
    else:
        cache = HeadSplitCache(full_per_layer(kv, spec.n_layers), spec.n_kv_heads, args.sink, args.window)
        ctx = compressed_attention(model)
    with torch.no_grad(), ctx:
        t0 = time.perf_counter()
        for s in range(0, length, args.chunk):
            logits = model(ids[:, s : s + args.chunk], cache=cache, use_cache=True).logits
        prefill_s = time.perf_counter() - t0
        after_prompt = _stored(cache)
        token = logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            token = model(token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
        per_token_ms = 1000 * (time.perf_counter() - t0) / args.steps
    return {"variant": variant, "length": length, "kv_heads_kept": [str(k) for k in kv] if variant != "full" else "all",
            "cache_bytes_prompt": after_prompt, "cache_bytes_end": _stored(cache), "prefill_s": prefill_s,
            "ms_per_token": per_token_ms, "rss_growth_mib": _rss_mib() - base_rss}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="organism")
    p.add_argument("--heads", help="head_scores.json (its top 5 %% of heads pick the KV heads kept)")
    p.add_argument("--keep", help="KV heads kept whole, 'LAYER.KVHEAD,...' (instead of --heads)")
    p.add_argument("--lengths", default="1024,2000")
    p.add_argument("--sink", type=int, default=4)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--one", nargs=2, metavar=("VARIANT", "LENGTH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if not (args.heads or args.keep):
        p.error("give --heads FILE or --keep L.G,...")
    if args.one:
        print(json.dumps(one(args, args.one[0], int(args.one[1]))))
        return
    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        for variant in ("full", "compressed"):
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", variant, str(length)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}; sink {args.sink}, window {args.window}, {args.steps} steps, chunk {args.chunk}")
    print("| tokens | cache | KiB after prompt | KiB at end | prefill s | ms / token | RSS growth MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['length']} | {r['variant']} ({r['kv_heads_kept'] if r['variant'] != 'full' else 'all'}) | "
              f"{r['cache_bytes_prompt'] / 1024:.0f} | {r['cache_bytes_end'] / 1024:.0f} | {r['prefill_s']:.3f} | "
              f"{r['ms_per_token']:.2f} | {r['rss_growth_mib']:.1f} |")


if __name__ == "__main__":
    main()
