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

``--shape llama-3.2-1b``: the same at length on a random-initialised model with Llama-3.2-1B's layer
geometry (hidden 2048, MLP 8192, 32 query / 8 KV heads, head_dim 64, vocab 128,256 tied; ``--layers``
of them, 1 by default on a CPU), ``logits_to_keep=1``, contexts 4K-32K; ``full`` (``DynamicCache``) vs
``keep-K`` (``HeadSplitCache`` keeping ``K`` of 8 KV heads whole in every layer: 12.5/25/50 %, the others
sink + window). Each (repeat, length, variant) runs in its own process (peak RSS growth: ``ru_maxrss``
after the hiwater is reset once the model is built), repeats interleaved, rows appended to ``--out``
(a rerun resumes; ``--until HH:MM`` UTC starts nothing after that time). The table gives medians and,
per compressed variant, the median of its per-repeat ratios to ``full`` beside the floor: the FLOPs
(prefill) or bytes (decode) the design cannot go below (see :func:`floors`).

    nice -n 10 python benchmarks/kv_cache_memory.py --shape llama-3.2-1b --repeats 5 --out runs/kvlen.jsonl

``--decode-side-by-side``: decode only, every variant interleaved in one process on a cache pre-filled with
random keys and values (ratios a shared machine's load cannot skew between rows). ``--device cuda --dtype
bfloat16``: the same on a GPU (peak allocated device memory instead of RSS; ``gpu_check.sh`` with ``KV=1``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Llama-3.2-1B's layer geometry (config.json of meta-llama/Llama-3.2-1B)
SHAPES = {"llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8,
                               head_dim=64, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
                               max_position_embeddings=131072)}


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


def _rss_now_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak() -> bool:
    """Reset the peak RSS (Linux: ``clear_refs`` 5) so that ``ru_maxrss`` counts from now; False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def shape_model(shape: str, layers: int, device: str = "cpu", dtype: str = "float32"):  # noqa: ANN201 - a LlamaForCausalLM
    """A random-initialised Llama of ``shape``'s geometry with ``layers`` layers (uniform weights, filled in place
    on ``device``: fast to build)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(num_hidden_layers=layers, attn_implementation="sdpa", **SHAPES[shape])
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device=device).to(getattr(torch, dtype)).eval()
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.data.fill_(1.0)
        else:
            param.data.uniform_(-0.5, 0.5).mul_(1 / math.sqrt(param.shape[-1]))
    model.model.rotary_emb.__init__(cfg)  # its buffers were left empty by to_empty
    model.model.rotary_emb.to(device)
    return model


def shape_one(args: argparse.Namespace, variant: str, length: int) -> dict:
    """One row of the length benchmark, in this process: chunked prefill, ``--steps`` decode steps, memory."""
    import torch
    from transformers import DynamicCache

    from headatlas.kvcache import HeadSplitCache, compressed_attention, expected_bytes

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    model = shape_model(args.shape, args.layers, args.device, args.dtype)
    cfg = model.config
    n_kv = cfg.num_key_value_heads
    keep = n_kv if variant == "full" else int(variant.removeprefix("keep-"))
    full = [list(range(keep))] * cfg.num_hidden_layers
    ids = torch.randint(3, cfg.vocab_size, (1, length), generator=torch.Generator().manual_seed(0)).to(dev)
    load = os.getloadavg()[0]
    if cuda:  # peak device memory instead of RSS
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        reset, base = True, torch.cuda.memory_allocated() / 2**20
    else:
        reset = _reset_peak()
        base = _rss_now_mib() if reset else _rss_mib()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if variant == "full":
        cache, ctx = DynamicCache(config=cfg), torch.no_grad()
    else:
        cache, ctx = HeadSplitCache(full, n_kv, args.sink, args.window), compressed_attention(model)
    with torch.no_grad(), ctx:
        t0 = time.perf_counter()
        for s in range(0, length, args.chunk):
            logits = model(ids[:, s : s + args.chunk], cache=cache, use_cache=True, logits_to_keep=1).logits
        sync()
        prefill_s = time.perf_counter() - t0
        stored = _stored(cache)
        token = logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            token = model(token, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1:].argmax(-1)
        sync()
        per_token_ms = 1000 * (time.perf_counter() - t0) / args.steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_mib()
    formula = expected_bytes(full, n_kv, length, args.sink, args.window, cfg.head_dim,
                             torch.finfo(getattr(torch, args.dtype)).bits // 8)
    return {"variant": variant, "length": length, "keep": keep, "cache_bytes": stored, "formula_bytes": formula,
            "prefill_s": prefill_s, "ms_per_token": per_token_ms, "rss_growth_mib": peak - base,
            "peak_reset": reset, "load1": load, "threads": args.threads, "layers": args.layers, "chunk": args.chunk,
            "device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": args.dtype}


def floors(shape: str, layers: int, length: int, keep: int, sink: int, window: int, chunk: int, steps: int) -> dict:
    """The cost a variant cannot go below, and the full cache's, on ``shape`` (batch 1; ratios do not depend on the dtype).

    Everything but attention (projections, MLP, the last position's logits) is paid by every variant;
    attention costs ``4 x head_dim`` FLOPs per (query head, visible key) and reads each visible key and
    value once per KV head per decode step. Kept heads see the whole context, the others ``min(pos, sink
    + window)`` keys. Prefill: FLOPs over the prompt; decode: bytes read per step (weights + KV) at the
    mean context of the ``steps`` steps (decode at batch 1 is bandwidth-bound, prefill compute-bound).
    """
    g = SHAPES[shape]
    h, inter, nq, nkv, d, vocab = (g["hidden_size"], g["intermediate_size"], g["num_attention_heads"],
                                   g["num_key_value_heads"], g["head_dim"], g["vocab_size"])
    per_layer = h * nq * d * 2 + h * nkv * d * 2 + 3 * h * inter  # q, o, k, v, gate/up/down weights
    groups, w = nq // nkv, sink + window

    def prefill_flops(kept: int) -> float:
        full_keys = length * (length + 1) / 2
        stream_keys = sum(min(i, w) for i in range(1, min(length, w) + 1)) + max(0, length - w) * w
        attn = 4 * d * groups * (kept * full_keys + (nkv - kept) * stream_keys)
        lm_head = 2 * h * vocab * math.ceil(length / chunk)
        return layers * (2 * per_layer * length + attn) + lm_head

    def decode_bytes(kept: int) -> float:
        ctx = length + steps / 2
        kv = 2 * d * 4 * (kept * ctx + (nkv - kept) * min(ctx, w))
        return 4 * (layers * per_layer + h * vocab) + layers * kv

    return {"prefill_floor": prefill_flops(keep) / prefill_flops(nkv), "decode_floor": decode_bytes(keep) / decode_bytes(nkv),
            "cache_floor": (keep * length + (nkv - keep) * min(length, w)) / (nkv * length)}


def _median_ratio(rows: list[dict], key: str, variant: str, length: int) -> float | None:
    """Median over repeats of ``variant / full`` for ``key``, each ratio from one repeat (measured side by side)."""
    full = {r["repeat"]: r[key] for r in rows if r["variant"] == "full" and r["length"] == length}
    ratios = [r[key] / full[r["repeat"]] for r in rows
              if r["variant"] == variant and r["length"] == length and r["repeat"] in full and full[r["repeat"]]]
    return statistics.median(ratios) if ratios else None


def shape_table(args: argparse.Namespace, rows: list[dict]) -> str:
    """The markdown table of the length benchmark (medians, ratios beside floors, targets)."""
    lines = [f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, python "
             f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; shape {args.shape}, "
             f"{args.layers} layer(s), {args.dtype} on {rows[0].get('device', 'cpu')}, batch 1, chunk {args.chunk}, sink {args.sink}, window {args.window}, "
             f"{args.steps} decode steps, {args.threads} threads",
             f"load average (1 min) at the start of each row: min {min(r['load1'] for r in rows):.1f}, median "
             f"{statistics.median(r['load1'] for r in rows):.1f}, max {max(r['load1'] for r in rows):.1f}",
             "",
             "| tokens | cache | repeats | prefill s | ms / token | cache MiB | formula MiB | peak growth MiB "
             "| prefill ratio (floor) | decode ratio (floor) | cache ratio (floor) | RSS ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    variants = ["full"] + [f"keep-{k}" for k in args.keep_counts]
    for length in sorted({r["length"] for r in rows}):
        for v in variants:
            mine = [r for r in rows if r["variant"] == v and r["length"] == length]
            if not mine:
                continue
            med = {k: statistics.median(r[k] for r in mine) for k in ("prefill_s", "ms_per_token", "rss_growth_mib")}
            keep = mine[0]["keep"]
            share = f"{100 * keep / 8:g} % whole" if v != "full" else "DynamicCache"
            cells = [str(length), f"{v} ({share})", str(len(mine)), f"{med['prefill_s']:.2f}",
                     f"{med['ms_per_token']:.1f}", f"{mine[0]['cache_bytes'] / 2**20:.1f}",
                     f"{mine[0]['formula_bytes'] / 2**20:.1f}", f"{med['rss_growth_mib']:.0f}"]
            if v == "full":
                cells += ["1", "1", "1", "1"]
            else:
                f = floors(args.shape, args.layers, length, keep, args.sink, args.window, args.chunk, args.steps)
                ratio = {k: _median_ratio(rows, k, v, length) for k in ("prefill_s", "ms_per_token", "cache_bytes",
                                                                       "rss_growth_mib")}

                def cell(x: float | None, floor: float | None = None) -> str:
                    if x is None:
                        return "-"
                    return f"{x:.2f}x" + (f" ({floor:.2f}x; {x / floor:.2f} of it)" if floor else "")

                cells += [cell(ratio["prefill_s"], f["prefill_floor"]), cell(ratio["ms_per_token"], f["decode_floor"]),
                          cell(ratio["cache_bytes"], f["cache_floor"]), cell(ratio["rss_growth_mib"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def decode_side_by_side(args: argparse.Namespace) -> str:
    """Decode only, every variant in this one process, interleaved: the cache pre-filled with random keys and
    values of each length (no prefill), ``--steps`` greedy steps per repeat; ms per token, median of the
    per-repeat ratios to ``full`` beside the bytes floor (the ratios the shared machine's load cannot skew
    between rows)."""
    import torch
    from transformers import DynamicCache

    from headatlas.kvcache import HeadSplitCache, compressed_attention

    torch.set_num_threads(args.threads)
    model = shape_model(args.shape, args.layers, args.device, args.dtype)
    cfg = model.config
    n_kv, d, n_layers = cfg.num_key_value_heads, cfg.head_dim, cfg.num_hidden_layers
    variants = ["full"] + [f"keep-{k}" for k in args.keep_counts]
    lines = [f"decode only, {args.steps} steps, {args.repeats} interleaved repeats in one process, load "
             f"{os.getloadavg()[0]:.1f} at the start", "",
             "| tokens | cache | ms / token (median) | ratio (bytes floor; of it) |", "|---|---|---|---|"]
    for length in [int(x) for x in args.lengths.split(",")]:
        gen = torch.Generator().manual_seed(0)
        kv = [(torch.randn(1, n_kv, length, d, generator=gen).to(model.device, model.dtype),
               torch.randn(1, n_kv, length, d, generator=gen).to(model.device, model.dtype)) for _ in range(n_layers)]
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.repeats):
            for v in variants:
                if v == "full":
                    cache, ctx = DynamicCache(config=cfg), torch.no_grad()
                else:
                    keep = int(v.removeprefix("keep-"))
                    cache = HeadSplitCache([list(range(keep))] * n_layers, n_kv, args.sink, args.window)
                    ctx = compressed_attention(model)
                for i, (k, val) in enumerate(kv):
                    cache.update(k.clone(), val.clone(), i, kwargs={})
                    if v != "full":
                        cache.layers[i].take_pending()  # the fill is no forward: nothing attends to it
                token = torch.tensor([[5]], device=model.device)
                with torch.no_grad(), ctx:
                    for step in range(args.steps + 1):
                        if step == 1:  # the first step warms up
                            t0 = time.perf_counter()
                        token = model(token, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1:].argmax(-1)
                times[v].append(1000 * (time.perf_counter() - t0) / args.steps)
                del cache
        for v in variants:
            med = statistics.median(times[v])
            if v == "full":
                lines.append(f"| {length} | full | {med:.1f} | 1 |")
                continue
            keep = int(v.removeprefix("keep-"))
            ratio = statistics.median(t / f for t, f in zip(times[v], times["full"], strict=True))
            floor = floors(args.shape, args.layers, length, keep, args.sink, args.window, args.chunk, args.steps)
            lines.append(f"| {length} | {v} ({100 * keep / n_kv:g} % whole) | {med:.1f} | {ratio:.2f}x "
                         f"({floor['decode_floor']:.2f}x; {ratio / floor['decode_floor']:.2f} of it) |")
    return "\n".join(lines)


def shape_main(args: argparse.Namespace) -> None:
    """Run (or resume) the interleaved repeats in one process per row; print the table."""
    out = Path(args.out)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    done = {(r["repeat"], r["length"], r["variant"]) for r in rows}
    variants = ["full"] + [f"keep-{k}" for k in args.keep_counts]
    lengths = [int(x) for x in args.lengths.split(",")]
    for repeat in range(args.repeats):
        for length in lengths:
            if args.max_repeats_at and length in args.max_repeats_at and repeat >= args.max_repeats_at[length]:
                continue
            for v in variants:
                if (repeat, length, v) in done:
                    continue
                if args.until and time.strftime("%H:%M", time.gmtime()) >= args.until:
                    print(f"past {args.until} UTC: nothing more started", file=sys.stderr)
                    print(shape_table(args, rows))
                    return
                cmd = [sys.executable, __file__, *sys.argv[1:], "--one", v, str(length)]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode:
                    sys.exit(f"{v} at {length} failed:\n{res.stderr[-2000:]}")
                row = json.loads(res.stdout.strip().splitlines()[-1]) | {"repeat": repeat}
                rows.append(row)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), file=sys.stderr, flush=True)
    print(shape_table(args, rows))


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
    p.add_argument("--shape", choices=sorted(SHAPES), help="the length benchmark on this layer geometry")
    p.add_argument("--layers", type=int, default=1, help="(--shape) decoder layers")
    p.add_argument("--keep-counts", default="1,2,4", help="(--shape) KV heads of 8 kept whole per layer, per variant")
    p.add_argument("--repeats", type=int, default=5, help="(--shape) interleaved repeats")
    p.add_argument("--max-repeats-at", default="", help="(--shape) fewer repeats at some lengths: 'LENGTH:N,...'")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="(--shape) cpu or cuda (on cuda the memory column is peak "
                   "allocated device memory)")
    p.add_argument("--dtype", default="float32", help="(--shape) float32 or bfloat16")
    p.add_argument("--out", default="kv_length.jsonl", help="(--shape) rows, appended; a rerun resumes")
    p.add_argument("--until", default="", help="(--shape) start no row after HH:MM UTC")
    p.add_argument("--table", action="store_true", help="(--shape) print the table of --out and stop")
    p.add_argument("--decode-side-by-side", action="store_true",
                   help="(--shape) decode only, all variants interleaved in one process on a pre-filled cache")
    args = p.parse_args()
    if args.shape:
        for name, default in (("lengths", "1024,2000"), ("window", 64), ("steps", 32), ("chunk", 256)):
            if getattr(args, name) == default:
                setattr(args, name, {"lengths": "4096,8192,16384,32768", "window": 256, "steps": 64,
                                     "chunk": 256}[name])
        args.keep_counts = [int(k) for k in str(args.keep_counts).split(",")]
        args.max_repeats_at = dict(tuple(map(int, x.split(":"))) for x in args.max_repeats_at.split(",") if x)
        if args.one:
            print(json.dumps(shape_one(args, args.one[0], int(args.one[1]))))
        elif args.decode_side_by_side:
            print(decode_side_by_side(args))
        elif args.table:
            rows = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]
            print(shape_table(args, rows))
        else:
            shape_main(args)
        return
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
