"""How fast is detection? The reference algorithm vs greedy and teacher modes vs one forward, batch sizes, prefix sharing.

A randomly initialised model of a given shape (``--shape``: ``small`` for
CPUs, ``llama-3.1-8b`` or ``qwen2.5-7b`` for GPUs), random token prompts with
a 20-token answer span; every decoding variant runs exactly ``--steps`` steps
(no stop token) and teacher forcing scores the 20 answer rows, so all variants
do the same scoring. Everything runs in one process, side by side, and prints:

1. per length: ``reference`` (the reference code's algorithm as it runs on a
   GPU: an SDPA prefill, then eager decoding that returns every attention map
   and a ``.item()`` host sync per head and step), ``greedy``
   (:func:`headatlas.detect.greedy_batch` on the default decode path:
   static cache + compiled step on CUDA), ``greedy dyn.`` (the dynamic-cache
   path), ``teacher`` (:func:`~headatlas.detect.teacher_batch`) and one
   SDPA ``forward`` of the prompt (the floor), batch 1, mean seconds per prompt;
   ``capture/SDPA``: one forward recording 20 rows vs the same forward bare;
2. greedy seconds per prompt by batch size at the first length (``auto``:
   :func:`headatlas.generation.auto_batch_size`);
3. a lengths x depths grid from one haystack in teacher mode, with prefix
   sharing (:mod:`headatlas.prefix`) vs without: total seconds and ratio.

    python benchmarks/detect_speed.py                                   # CPU, small shape
    python benchmarks/detect_speed.py --device cuda --dtype bfloat16 --shape llama-3.1-8b \\
        --lengths 4096,16384,32768 --batch-sizes 1,4,8,16,auto --grid-lengths 256:8192:20 --out results.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import time
from collections.abc import Callable

import torch

ANSWER = 20
SHAPES = {
    "small": dict(family="llama", vocab_size=4096, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=2),
    "llama-3.1-8b": dict(family="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0),
    "qwen2.5-7b": dict(family="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, rope_theta=1000000.0),
}


def build_model(shape: str, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    spec = dict(SHAPES[shape])
    family = spec.pop("family")
    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if family == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    cfg = config_cls(**spec, max_position_embeddings=131072, attn_implementation="sdpa")
    torch.manual_seed(0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_cls(cfg).eval()
    finally:
        torch.set_default_dtype(before)
    return model


def make_prompt(vocab: int, length: int, depth: float, seed: int) -> tuple[list[int], tuple[int, int]]:
    """Random token ids with an answer span of ``ANSWER`` tokens at ``depth``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (length,), generator=g).tolist()
    start = min(int(depth * (length - ANSWER)), length - ANSWER - 1)
    return ids, (start, start + ANSWER)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


@torch.no_grad()
def reference_detect(model, ids: list[int], span: tuple[int, int], steps: int) -> None:
    """The reference algorithm on a GPU: SDPA prefill, then eager decoding with maps and a host sync per head."""
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    device = next(model.parameters()).device
    scores = [[0.0] * n_heads for _ in range(n_layers)]
    start, end = span
    seq = torch.tensor([ids], device=device)
    kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def cache_of(output):
        cache = output.get("cache")
        return cache if cache is not None else output.get("past_key_values")

    out = model(seq[:, :-1], use_cache=True, logits_to_keep=1)
    model.set_attn_implementation("eager")
    try:
        out = model(seq[:, -1:], use_cache=True, output_attentions=True, **{kw: cache_of(out)})
        for _ in range(steps):
            token = out.logits[0, -1].argmax()
            token_id = token.item()
            for layer in range(n_layers):
                for head in range(n_heads):
                    i = out.attentions[layer][0][head][-1].argmax().item()  # one host sync per head per step
                    if start <= i < end and ids[i] == token_id:
                        scores[layer][head] += 1 / (end - start)
            out = model(token[None, None], use_cache=True, output_attentions=True, **{kw: cache_of(out)})
    finally:
        model.set_attn_implementation("sdpa")


def per_length(model, device: str, lengths: list[int], n_prompts: int, steps: int) -> list[dict]:
    from headatlas.capture import capture_attention
    from headatlas.detect import StopTokens, greedy_batch, teacher_batch

    vocab = model.config.vocab_size
    stops = StopTokens.none(vocab)
    rows = []
    dev = torch.device(device)
    for length in lengths:
        prompts = [make_prompt(vocab, length, (k + 1) / (n_prompts + 1), seed=k) for k in range(n_prompts)]

        def forward(ids):
            return model(torch.tensor([ids], device=dev), logits_to_keep=1)

        def captured(ids):
            rows_ = torch.arange(len(ids) - ANSWER, len(ids), device=dev)[None]
            with capture_attention(model, rows="explicit") as rec:
                rec.set_rows(rows_)
                return forward(ids)

        def greedy_dynamic(ids, span):
            os.environ["HEADATLAS_FAST_DECODE"] = "off"
            try:
                greedy_batch(model, [ids], [span], steps, stops)
            finally:
                os.environ.pop("HEADATLAS_FAST_DECODE")

        variants = {
            "reference": lambda ids, span: reference_detect(model, ids, span, steps),
            "greedy": lambda ids, span: greedy_batch(model, [ids], [span], steps, stops),
            "greedy_dynamic": greedy_dynamic,
            "teacher": lambda ids, span: teacher_batch(model, [ids], [span]),
            "forward": lambda ids, span: forward(ids),
            "capture": lambda ids, span: captured(ids),
        }
        row = {"tokens": length}
        with torch.no_grad():
            for name, fn in variants.items():
                fn(*prompts[0])  # warm-up (and, on CUDA, compilation of this shape): not timed
                row[name] = sum(timed(lambda p=p, fn=fn: fn(*p), device) for p in prompts) / len(prompts)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def batch_rows(model, device: str, length: int, sizes: list[str], steps: int) -> list[dict]:
    from headatlas.detect import StopTokens, greedy_batch
    from headatlas.generation import auto_batch_size

    vocab = model.config.vocab_size
    stops = StopTokens.none(vocab)
    out = []
    for size in sizes:
        n = auto_batch_size(model, length, steps) if size == "auto" else int(size)
        prompts = [make_prompt(vocab, length, 0.5, seed=100 + k) for k in range(n)]
        seqs, spans = [p[0] for p in prompts], [p[1] for p in prompts]
        with torch.no_grad():
            greedy_batch(model, seqs, spans, steps, stops)  # warm-up / compile
            seconds = timed(lambda seqs=seqs, spans=spans: greedy_batch(model, seqs, spans, steps, stops), device)
        row = {"batch": size, "rows": n, "seconds_per_prompt": seconds / n}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def grid_cost(model, device: str, lengths: list[int], depths: list[float]) -> dict:
    """Teacher mode over a lengths x depths grid from one haystack, with and without prefix sharing."""
    from headatlas.detect import teacher_batch
    from headatlas.prefix import compute_prefix, plan_batches

    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(7)
    hay = torch.randint(3, vocab, (max(lengths),), generator=g).tolist()
    answer = torch.randint(3, vocab, (ANSWER,), generator=g).tolist()
    seqs, spans = [], []
    for length in lengths:
        for depth in depths:
            start = int(depth * (length - ANSWER))
            seqs.append(hay[:start] + answer + hay[start : length - ANSWER])
            spans.append((start, start + ANSWER))

    def unshared():
        for s, sp in zip(seqs, spans, strict=True):
            teacher_batch(model, [s], [sp])

    def shared():
        prefix = None
        for members, n in plan_batches(seqs, 1, 64):
            i = members[0]
            n = min([n] + ([spans[i][0]] if spans[i][0] < n < spans[i][1] else []))
            if n and (prefix is None or prefix.tokens != tuple(seqs[i][:n])):
                prefix = None
                prefix = compute_prefix(model, seqs[i][:n])
            teacher_batch(model, [seqs[i]], [spans[i]], prefix=prefix if n else None)

    with torch.no_grad():
        teacher_batch(model, [seqs[0]], [spans[0]])  # warm-up
        t_shared = timed(shared, device)
        t_unshared = timed(unshared, device)
    total = sum(len(s) for s in seqs)
    row = {"prompts": len(seqs), "tokens": total, "unshared_s": t_unshared, "shared_s": t_shared,
           "ratio": t_shared / t_unshared}
    print(json.dumps(row), flush=True)
    return row


def parse_range(text: str) -> list[int]:
    """``'start:stop:count'`` (evenly spaced, ends included) or ``'1,2,3'``."""
    if ":" in text:
        a, b, n = (int(x) for x in text.split(":"))
        return [round(a + (b - a) * k / max(n - 1, 1)) for k in range(n)]
    return [int(x) for x in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--shape", default="small", choices=sorted(SHAPES))
    parser.add_argument("--lengths", default=None, help="default: 4096,16384,32768,65536 on CUDA, 1024,2048 on CPU")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per length (mean)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-sizes", default="1,4,8,16,auto")
    parser.add_argument("--grid-lengths", default=None, help="default: 256:8192:20 on CUDA, 256:2048:20 on CPU")
    parser.add_argument("--grid-depths", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable on a shared CPU)")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: lengths,batch,grid")
    parser.add_argument("--out", default=None, help="write all results as JSON here")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    torch.set_num_threads(args.threads)
    lengths = parse_range(args.lengths or ("4096,16384,32768,65536" if cuda else "1024,2048"))
    grid_lengths = parse_range(args.grid_lengths or ("256:8192:20" if cuda else "256:2048:20"))
    depths = [k / (args.grid_depths - 1) for k in range(args.grid_depths)]
    skip = set(filter(None, args.skip.split(",")))
    import transformers

    from headatlas.generation import fast_decode

    dtype = getattr(torch, args.dtype)
    started = time.time()
    model = build_model(args.shape, args.device, dtype)
    machine = torch.cuda.get_device_name() if cuda else f"{platform.machine()} CPU, {args.threads} thread(s)"
    head = (f"# detect speed: shape {args.shape}, {args.dtype}, {machine}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}, decode path {fast_decode(torch.device(args.device))}, "
            f"{args.steps} scored steps, {time.strftime('%Y-%m-%d')}")
    print(head, f"(model built in {time.time() - started:.0f} s)", flush=True)
    results: dict = {"header": head, "args": vars(args)}
    if "lengths" not in skip:
        results["lengths"] = per_length(model, args.device, lengths, args.prompts, args.steps)
    if "batch" not in skip:
        results["batch"] = batch_rows(model, args.device, lengths[0], args.batch_sizes.split(","), args.steps)
    if "grid" not in skip:
        results["grid"] = grid_cost(model, args.device, grid_lengths, depths)
        results["grid"]["shape"] = f"{len(grid_lengths)} lengths {grid_lengths[0]}-{grid_lengths[-1]} x {len(depths)} depths"
    from headatlas.generation import _COMPILE_FAILED

    results["compile_failures"] = list(_COMPILE_FAILED)
    print_tables(results)
    print(f"# total {time.time() - started:.0f} s", flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)


def print_tables(results: dict) -> None:
    print("\n" + results["header"])
    if results.get("lengths"):
        print("| tokens | reference s | greedy s | greedy dyn. s | teacher s | forward s | ref/teacher | ref/greedy "
              "| teacher/forward | greedy/forward | capture/SDPA |")
        print("|" + "---|" * 11)
        for r in results["lengths"]:
            print(f"| {r['tokens']} | {r['reference']:.3f} | {r['greedy']:.3f} | {r['greedy_dynamic']:.3f} | "
                  f"{r['teacher']:.3f} | {r['forward']:.3f} | {r['reference'] / r['teacher']:.1f}x | "
                  f"{r['reference'] / r['greedy']:.1f}x | {r['teacher'] / r['forward']:.2f}x | "
                  f"{r['greedy'] / r['forward']:.2f}x | {r['capture'] / r['forward']:.2f}x |")
    if results.get("batch"):
        ref = results["lengths"][0]["reference"] if results.get("lengths") else None
        print("\n| greedy batch | rows | s per prompt |" + (" ref/greedy |" if ref else ""))
        print("|---|---|---|" + ("---|" if ref else ""))
        for r in results["batch"]:
            extra = f" {ref / r['seconds_per_prompt']:.1f}x |" if ref else ""
            print(f"| {r['batch']} | {r['rows']} | {r['seconds_per_prompt']:.3f} |{extra}")
    if results.get("grid"):
        g = results["grid"]
        print(f"\n| grid (teacher) | prompts | tokens | unshared s | shared s | shared/unshared |\n|---|---|---|---|---|---|\n"
              f"| {g['shape']} | {g['prompts']} | {g['tokens']} | {g['unshared_s']:.2f} | {g['shared_s']:.2f} | "
              f"{g['ratio']:.2f}x |")
    if results.get("compile_failures"):
        print("compile failures:", results["compile_failures"])


if __name__ == "__main__":
    main()
