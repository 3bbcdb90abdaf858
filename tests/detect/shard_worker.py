"""Run under ``torchrun --nproc_per_node 2``: one shard of a detection run on a tiny model saved to disk.

Usage: python -m torch.distributed.run --standalone --nproc_per_node 2 shard_worker.py MODEL_DIR OUT_DIR N_PROMPTS
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from detect_helpers import copy_prompts, word_tokenizer  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from headatlas.detect import DetectConfig, detect  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    model_dir, out_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32).eval()
    tokenizer = word_tokenizer()
    prompts = copy_prompts(model, tokenizer, n=n)
    config = DetectConfig(max_new_tokens=10, rouge_threshold=0.3, accuracy_threshold=0.3, batch_size=2, progress=False, table_rows=0, heatmap=False)
    scores = detect(model, tokenizer, prompts, config, out_dir)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else int(__import__("os").environ["RANK"])
    Path(out_dir, f"returned.rank{rank}.json").write_text(json.dumps(scores.scores.tolist()))


if __name__ == "__main__":
    main()
