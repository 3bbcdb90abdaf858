"""What does looking at attention cost? Plain SDPA vs the capture forward vs eager output_attentions.

One forward of a random-init Llama (8 layers, hidden 512, 8 heads, 2 KV heads)
at each context length, each variant in its own subprocess so that peak
memory (ru_maxrss) is its own. The capture forward records the top-1 key of
16 query rows per layer and head (a teacher-forced answer's worth).

    python benchmarks/capture_overhead.py [--lengths 1024,2048,4096,8192] [--repeats 3]

Prints seconds per forward, the ratio to SDPA, and the peak RSS above the
process's baseline after loading the model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

ROWS = 16
EAGER_MAX_BYTES = 6 * 2**30  # eager output_attentions holds layers x heads x T x T floats


def build_model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=4096, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=16384,
    )
    return LlamaForCausalLM(cfg).eval()


def run_variant(variant: str, length: int, repeats: int) -> dict:
    import torch

    from headatlas import capture_attention

    torch.set_num_threads(2)
    model = build_model()
    ids = torch.randint(0, 4096, (1, length))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            if variant == "sdpa":
                model(ids, logits_to_keep=1)
            elif variant == "capture":
                with capture_attention(model, rows="explicit") as rec:
                    rec.set_rows(torch.arange(length - ROWS, length)[None])
                    model(ids, logits_to_keep=1)
                rec.stacked()
            elif variant == "eager":
                model.set_attn_implementation("eager")
                out = model(ids, logits_to_keep=1, output_attentions=True)
                # the reference then takes the top-1 of the answer rows of every head
                [a[0, :, -ROWS:].argmax(-1) for a in out.attentions]
                del out
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": min(times), "peak_mib": (peak - base_rss) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="1024,2048,4096,8192")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child[0], int(args.child[1]), args.repeats)))
        return
    lengths = [int(x) for x in args.lengths.split(",")]
    print("| tokens | SDPA s | capture s | eager s | capture/SDPA | eager/SDPA | SDPA MiB | capture MiB | eager MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for length in lengths:
        res = {}
        for variant in ("sdpa", "capture", "eager"):
            if variant == "eager" and 8 * 8 * length * length * 4 > EAGER_MAX_BYTES:
                res[variant] = None  # would not fit next to the rest of the machine's work
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--child", variant, str(length), "--repeats", str(args.repeats)],
                capture_output=True, text=True, check=True,
            )
            res[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        s, c, e = res["sdpa"], res["capture"], res["eager"]
        eager_s = f"{e['seconds']:.2f}" if e else "skipped (>6 GiB)"
        eager_r = f"{e['seconds'] / s['seconds']:.2f}x" if e else "-"
        eager_m = f"{e['peak_mib']:.0f}" if e else "-"
        print(
            f"| {length} | {s['seconds']:.3f} | {c['seconds']:.3f} | {eager_s} | {c['seconds'] / s['seconds']:.2f}x "
            f"| {eager_r} | {s['peak_mib']:.0f} | {c['peak_mib']:.0f} | {eager_m} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
