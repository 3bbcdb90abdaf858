"""RetMask training: standard DPO (TRL's ``DPOTrainer``) on the pairs of :mod:`headatlas.retmask.pairs`.

Defaults follow the paper (sigmoid loss, beta 0.1, lr 5e-7 cosine, 2 epochs, full fine-tuning); LoRA is one
flag. Multi-GPU is accelerate's business: ``accelerate launch -m headatlas.retmask.train --model M
--pairs pairs.jsonl --out runs/retmask`` (``--help`` lists every field of :class:`RetMaskTrainConfig`).

>>> result = train_retmask("organism", "pairs.jsonl", "runs/retmask", RetMaskTrainConfig(use_lora=True))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..builtins import builtin_name
from ..model_spec import resolve_model_path
from ..runs import atomic_write_json, open_run, read_jsonl, run_metadata, stamp, track
from .curves import (
    CURVES_FILE,
    CURVES_PLOT,
    curves_record,
    heldout_metrics,
    plot_curves,
    split_pairs,
    train_curves,
)

RUN_FILE = "retmask_run.json"
MERGED_DIR = "merged"


@dataclass
class RetMaskTrainConfig:
    """DPO settings for RetMask (paper defaults; ``warmup_ratio`` is not stated there), turned into TRL's
    ``DPOConfig`` by :meth:`to_dpo_config`; ``dpo_overrides`` sets any other ``DPOConfig`` field.

    >>> RetMaskTrainConfig().to_dpo_config("/tmp/out").beta
    0.1
    """

    # DPO
    loss_type: str = field(default="sigmoid", metadata={"help": "TRL DPO loss type (paper: sigmoid)."})
    beta: float = field(default=0.1, metadata={"help": "DPO beta: strength of the pull to the reference (paper: 0.1)."})
    max_length: int | None = field(
        default=None, metadata={"help": "Max prompt+response tokens; None keeps whole long-context prompts."}
    )
    precompute_ref_log_probs: bool = field(
        default=False, metadata={"help": "Compute reference log-probs once before training (frees the reference)."}
    )
    # optimiser
    learning_rate: float = field(default=5e-7, metadata={"help": "Peak learning rate (paper: 5e-7)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule (paper: cosine)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of steps for linear warm-up."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs over the pairs (paper: 2)."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimiser steps (> 0 overrides epochs)."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Pairs per device per micro-batch."})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Micro-batches per optimiser step."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    # LoRA
    use_lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "'all-linear' or comma-separated module names, e.g. q_proj,o_proj."}
    )
    merge_lora: bool = field(default=False, metadata={"help": "Also save the LoRA-merged full model in OUT/merged."})
    # run
    seed: int = field(default=42, metadata={"help": "Seed for data order, LoRA init and dropout."})
    bf16: str = field(default="auto", metadata={"help": "bf16 mixed precision: auto (on a bf16 GPU), true or false."})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Trade compute for memory on long prompts."})
    logging_steps: int = field(default=1, metadata={"help": "Log the DPO metrics every N optimiser steps."})
    heldout_fraction: float = field(
        default=0.1,
        metadata={"help": "Share of the pairs held out of training (drawn with seed); DPO metrics on them are "
                  "recorded before and after training in training_curves.json. 0: none."},
    )
    # `| str | None`: HfArgumentParser then reads the flag as a string (JSON), parsed in __post_init__
    dpo_overrides: dict[str, Any] | str | None = field(
        default_factory=dict, metadata={"help": "Other DPOConfig / TrainingArguments fields, as a dict."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.dpo_overrides, str):  # from the command line: a JSON object
            self.dpo_overrides = json.loads(self.dpo_overrides) if self.dpo_overrides.strip() else {}
        self.dpo_overrides = dict(self.dpo_overrides or {})
        if self.beta <= 0:
            raise ValueError("beta must be > 0")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise ValueError("give num_train_epochs > 0 or max_steps > 0")
        if self.bf16 not in ("auto", "true", "false", True, False):
            raise ValueError("bf16 must be auto, true or false")
        if self.use_lora and self.lora_r < 1:
            raise ValueError("lora_r must be >= 1")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError("max_length must be >= 2 or None")
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError("heldout_fraction must be in [0, 1)")

    def use_bf16(self) -> bool:
        if self.bf16 == "auto":
            return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        return self.bf16 in ("true", True)

    def to_dpo_config(self, output_dir: str | Path):  # noqa: ANN201 - trl.DPOConfig (lazy import)
        """TRL's ``DPOConfig`` for these settings (``dpo_overrides`` applied last)."""
        from trl import DPOConfig

        kwargs: dict[str, Any] = dict(
            output_dir=str(output_dir),
            loss_type=[self.loss_type],
            beta=self.beta,
            max_length=self.max_length,
            precompute_ref_log_probs=self.precompute_ref_log_probs,
            learning_rate=self.learning_rate,
            lr_scheduler_type=self.lr_scheduler_type,
            warmup_steps=self.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            weight_decay=self.weight_decay,
            seed=self.seed,
            bf16=self.use_bf16(),
            gradient_checkpointing=self.gradient_checkpointing,
            logging_steps=self.logging_steps,
            save_strategy="no",  # the final model is saved by train_retmask
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
        )
        kwargs.update(self.dpo_overrides or {})
        return DPOConfig(**kwargs)

    def to_lora_config(self):  # noqa: ANN201 - peft.LoraConfig (lazy import)
        """PEFT's ``LoraConfig`` for these settings."""
        from peft import LoraConfig

        targets: str | list[str] = self.lora_target_modules
        if targets != "all-linear":
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=targets, task_type="CAUSAL_LM")


@dataclass
class TrainResult:
    """Where the trained model went and what training logged."""

    out_dir: Path
    n_pairs: int
    metrics: dict[str, Any]
    log_history: list[dict[str, Any]]
    merged_dir: Path | None = None
    trainer: Any = field(default=None, repr=False)  # the trl.DPOTrainer, for further use in the same process
    curves: dict[str, Any] | None = None  # the content of training_curves.json (retmask.curves)


def load_pairs(pairs: str | Path | Sequence[dict[str, Any]]):  # noqa: ANN201 - datasets.Dataset
    """A ``datasets.Dataset`` with the ``prompt``/``chosen``/``rejected`` columns of a pairs JSONL (or rows)."""
    from datasets import Dataset

    rows = _pair_rows(pairs)
    if not rows:
        raise ValueError(f"no preference pairs in {pairs if isinstance(pairs, (str, Path)) else 'the given rows'}")
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in rows[0]]
    if missing:
        raise ValueError(f"pairs lack the columns {missing} (expected TRL's preference format)")
    kinds = {isinstance(r["prompt"], list) for r in rows}
    if len(kinds) > 1:
        raise ValueError("pairs mix chat (list of messages) and plain-text prompts; train on one kind at a time")
    return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])


def build_trainer(model: str, pairs, out_dir: str | Path, config: RetMaskTrainConfig, tokenizer=None):  # noqa: ANN001, ANN201
    """A ready ``trl.DPOTrainer`` (for callers who want to step, evaluate or add callbacks themselves)."""
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    path = resolve_model_path(model)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = pairs if hasattr(pairs, "column_names") else load_pairs(pairs)
    # the policy (and, for full fine-tuning, the frozen reference) is loaded by TRL from the path, so that
    # DeepSpeed/FSDP place and shard it; TRL loads float32 weights unless model_init_kwargs say otherwise
    return DPOTrainer(
        model=path, args=config.to_dpo_config(out_dir), train_dataset=dataset, processing_class=tokenizer,
        peft_config=config.to_lora_config() if config.use_lora else None,
    )


def save_merged(adapter_dir: str | Path, merged_dir: str | Path) -> Path:
    """Merge a saved LoRA adapter (reloaded from disk: works after a sharded run) into its base model; save it."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir), dtype="auto")
    model.merge_and_unload(safe_merge=True).save_pretrained(merged_dir)
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(merged_dir)
    return Path(merged_dir)


def _pair_rows(pairs: str | Path | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return list(read_jsonl(pairs)) if isinstance(pairs, (str, Path)) else list(pairs)


def train_retmask(
    model: str,
    pairs: str | Path | Sequence[dict[str, Any]],
    out_dir: str | Path,
    config: RetMaskTrainConfig | None = None,
) -> TrainResult:
    """Train ``model`` (a path, hub id or ``organism``) with DPO on RetMask ``pairs``; save it to ``out_dir``.

    ``out_dir`` gets the model (adapter with LoRA, plus ``merged/`` with ``merge_lora``), ``retmask_run.json``
    and ``training_curves.json``/``.png`` (:mod:`.curves`). It is a run (:func:`headatlas.runs.open_run`):
    other base model, pairs or settings are refused; a finished training is kept (``trainer`` None).
    """
    config = config or RetMaskTrainConfig()
    out_dir = Path(out_dir)
    from transformers import AutoTokenizer

    rows = _pair_rows(pairs)
    load_pairs(rows)  # bad pairs and a model that exists nowhere are refused before the folder is touched
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model))
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
    run = open_run(out_dir, "retmask-train", {"base model": model, **asdict(config)}, discard=(RUN_FILE,),
                   fingerprints={"the preference pairs": digest}, model=model, seed=config.seed,
                   hint=f"Use another --out folder, or delete {out_dir} to train again.")
    if run.resumed and (out_dir / RUN_FILE).is_file():
        done = json.loads((out_dir / RUN_FILE).read_text(encoding="utf-8"))
        print(f"{out_dir}: resuming: 1 of 1 trainings done (kept)", file=sys.stderr, flush=True)
        merged = Path(done["merged_dir"]) if done.get("merged_dir") else None
        curves = json.loads((out_dir / CURVES_FILE).read_text(encoding="utf-8")) if (out_dir / CURVES_FILE).is_file() \
            else None
        return TrainResult(out_dir, done["n_pairs"], done["metrics"], done["log_history"], merged, None, curves)
    train_rows, held_rows = split_pairs(rows, config.heldout_fraction, config.seed)
    trainer = build_trainer(model, load_pairs(train_rows), out_dir, config, tokenizer)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.utils.logging import is_progress_bar_enabled

    if not is_progress_bar_enabled():  # the CLI's quiet mode (no --verbose): no per-step dicts on the console
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    held_tok, ref_logps, before = None, None, None
    sharded = getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False)
    if held_rows and not sharded:  # held-out log-probs are computed outside the trainer's (sharded) engine
        # tokenized exactly as TRL tokenizes the training pairs
        held_tok = list(trainer._prepare_dataset(load_pairs(held_rows), trainer.processing_class, trainer.args, "heldout"))
        before, ref_logps = heldout_metrics(trainer.model, trainer.ref_model, held_tok, config.beta)
    with track("retmask train", 1, enabled=False):  # Ctrl-C: says how to go on
        output = trainer.train()
    after = heldout_metrics(trainer.model, trainer.ref_model, held_tok, config.beta, ref_logps)[0] if held_tok else None
    trainer.save_model(str(out_dir))
    merged_dir = None
    if config.use_lora and config.merge_lora:
        merged_dir = out_dir / MERGED_DIR
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            save_merged(out_dir, merged_dir)
    log_history = list(trainer.state.log_history)
    meta = run_metadata(base_model=builtin_name(str(model)), base_path=resolve_model_path(model), seed=config.seed, config=asdict(config),
                        n_pairs=len(train_rows), n_heldout=len(held_rows), world_size=trainer.args.world_size,
                        heldout_ids=[str(r.get("id", i)) for i, r in enumerate(held_rows)])
    curves = curves_record(train_curves(log_history), before, after, meta)
    result = TrainResult(out_dir, len(trainer.train_dataset), dict(output.metrics), log_history, merged_dir, trainer,
                         curves)
    if trainer.is_world_process_zero():
        atomic_write_json(out_dir / CURVES_FILE, curves)
        plot_curves(curves, out_dir / CURVES_PLOT)
        atomic_write_json(out_dir / RUN_FILE, stamp("retmask-train", {
            **run.meta, "base_model": builtin_name(str(model)), "base_path": resolve_model_path(model),
            "pairs": str(pairs) if isinstance(pairs, (str, Path)) else "<rows>", "n_pairs": result.n_pairs,
            "n_heldout": len(held_rows), "config": asdict(config), "metrics": result.metrics,
            "log_history": result.log_history, "heldout": {"before": before, "after": after},
            "adapter": config.use_lora, "merged_dir": str(merged_dir) if merged_dir else None,
            "world_size": trainer.args.world_size,
        }))
    return result


@dataclass
class TrainPaths:
    """The inputs and output of ``python -m headatlas.retmask.train``."""

    model: str = field(metadata={"help": "Base model: path, hub id or 'organism'."})
    pairs: str = field(metadata={"help": "Pairs JSONL written by `retmask pairs`."})
    out: str = field(metadata={"help": "Output directory."})


def main(argv: Sequence[str] | None = None) -> TrainResult:
    """``python -m headatlas.retmask.train --model M --pairs P --out D [--use_lora] [--learning_rate ...]``."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser((TrainPaths, RetMaskTrainConfig))
    paths, config = parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else sys.argv[1:])
    return train_retmask(paths.model, paths.pairs, paths.out, config)


if __name__ == "__main__":
    main()
