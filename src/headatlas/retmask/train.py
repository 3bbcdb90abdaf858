"""RetMask training: standard DPO (TRL's ``DPOTrainer``) on the pairs of :mod:`headatlas.retmask.pairs`.

The settings are TRL's ``DPOConfig`` with RetMask's defaults (:class:`RetMaskTrainConfig`, the paper's: sigmoid
loss, beta 0.1, lr 5e-7 with warm-up and cosine decay, weight decay 0.1, 2 epochs, full fine-tuning); LoRA is
one field. This module imports TRL: it needs the ``train`` extra. Multi-GPU is accelerate's business:
``accelerate launch $(which headatlas) retmask train --model M --pairs pairs.jsonl --out runs/retmask``.

>>> result = train_retmask("organism", "pairs.jsonl", "runs/retmask", RetMaskTrainConfig(use_lora=True))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import DPOConfig

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


#: The settings a user tunes: the ``retmask train`` options (docs/retmask.md lists them). Every other field of
#: TRL's ``DPOConfig`` keeps its value, and can be set in Python.
TUNED_FIELDS: tuple[str, ...] = (
    "learning_rate", "num_train_epochs", "max_steps", "beta", "loss_type", "lr_scheduler_type", "warmup_steps",
    "weight_decay", "per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "seed",
    "gradient_checkpointing", "logging_steps", "heldout_fraction",
    "use_lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "merge_lora",
)
#: Fields that say where or how a process runs, not what it trains: not part of a training's identity.
_NOT_IDENTITY = frozenset({"output_dir", "logging_dir", "run_name", "use_cpu", "local_rank", "ddp_backend", "report_to",
                           "disable_tqdm", "dataloader_num_workers", "hub_token", "save_strategy", "save_steps",
                           "save_total_limit"})


@dataclass
class RetMaskTrainConfig(DPOConfig):
    """TRL's ``DPOConfig`` with RetMask's defaults (the paper's: sigmoid loss, beta 0.1, lr 5e-7 with warm-up
    and cosine decay, weight decay 0.1, 2 epochs, full fine-tuning) and RetMask's own fields (LoRA, the
    held-out share). Every ``DPOConfig``/``TrainingArguments`` field is a field here; ``retmask train``
    exposes :data:`TUNED_FIELDS`.

    >>> c = RetMaskTrainConfig()
    >>> (c.loss_type, c.beta, c.learning_rate, c.num_train_epochs, c.weight_decay)
    (['sigmoid'], 0.1, 5e-07, 2.0, 0.1)
    """

    # TRL / transformers fields whose defaults RetMask changes
    learning_rate: float = field(default=5e-7, metadata={"help": "Peak learning rate (paper: 5e-7, for 8B models)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule (paper: cosine)."})
    warmup_steps: float = field(
        default=0.1, metadata={"help": "Linear warm-up: steps, or a share of all steps when < 1 (ours: 0.1)."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (paper: 0.1)."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs over the pairs (paper: 2)."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Pairs per device per micro-batch."})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Micro-batches per optimiser step."})
    max_length: int | None = field(
        default=None, metadata={"help": "Max prompt+response tokens; None keeps whole long-context prompts."})
    logging_steps: float = field(default=1, metadata={"help": "Log the DPO metrics every N optimiser steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpoints during training (the final model is "
                                                                 "saved by train_retmask)."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision (None: on a GPU that has it)."})
    # RetMask's own
    use_lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "'all-linear' or comma-separated module names, e.g. q_proj,o_proj."})
    merge_lora: bool = field(default=False, metadata={"help": "Also save the LoRA-merged full model in OUT/merged."})
    heldout_fraction: float = field(
        default=0.1,
        metadata={"help": "Share of the pairs held out of training (drawn with seed); DPO metrics on them are "
                          "recorded before and after training in training_curves.json. 0: none."},
    )

    def __post_init__(self) -> None:
        for name, ok, accepted in (
            ("beta", self.beta > 0, "> 0"), ("learning_rate", self.learning_rate > 0, "> 0"),
            ("warmup_steps", self.warmup_steps >= 0, ">= 0 (a share of the steps when < 1)"),
            ("num_train_epochs", self.num_train_epochs > 0 or self.max_steps > 0, "> 0, or max_steps > 0"),
            ("lora_r", not self.use_lora or self.lora_r >= 1, ">= 1"),
            ("max_length", self.max_length is None or self.max_length >= 2, ">= 2 or None"),
            ("heldout_fraction", 0 <= self.heldout_fraction < 1, "in [0, 1)"),
        ):
            if not ok:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not accepted; it must be {accepted}")
        if self.bf16 is None:  # TrainingArguments' own "auto" would pick bf16 on a CPU too
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        if not torch.cuda.is_available():
            self.use_cpu = True
        super().__post_init__()

    def identity(self) -> dict[str, Any]:
        """What defines a training: the tuned fields, plus every other field set away from its default."""
        default = type(self)()
        out = {name: _plain(getattr(self, name)) for name in TUNED_FIELDS}
        for f in dataclasses.fields(self):
            if f.name in out or f.name in _NOT_IDENTITY or not f.init:
                continue
            value = _plain(getattr(self, f.name))
            if value != _plain(getattr(default, f.name)):
                out[f.name] = value
        return out

    def to_lora_config(self):  # noqa: ANN201 - peft.LoraConfig (lazy import)
        """PEFT's ``LoraConfig`` for these settings."""
        from peft import LoraConfig

        targets: str | list[str] = self.lora_target_modules
        if targets != "all-linear":
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=targets, task_type="CAUSAL_LM")


def _plain(value: Any) -> Any:
    """A JSON-comparable form of a config value (enums by value, other objects as text)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


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
        model=path, args=with_output_dir(config, out_dir), train_dataset=dataset, processing_class=tokenizer,
        peft_config=config.to_lora_config() if config.use_lora else None,
    )


def with_output_dir(config: RetMaskTrainConfig, out_dir: str | Path) -> RetMaskTrainConfig:
    """A copy of ``config`` writing to ``out_dir`` (TRL's trainer reads ``output_dir`` from its arguments)."""
    copy = deepcopy(config)
    copy.output_dir = str(out_dir)
    return copy


def last_checkpoint(out_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` folder the trainer left in ``out_dir`` (None: start from the base model)."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(out_dir)) if Path(out_dir).is_dir() else None


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
    run = open_run(out_dir, "retmask-train", {"base model": model, **config.identity()}, discard=(RUN_FILE,),
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
        # an interrupted training with checkpoints (save_strategy="steps") goes on from its last one
        output = trainer.train(resume_from_checkpoint=last_checkpoint(out_dir))
    after = heldout_metrics(trainer.model, trainer.ref_model, held_tok, config.beta, ref_logps)[0] if held_tok else None
    trainer.save_model(str(out_dir))
    if trainer.is_world_process_zero():
        for done in out_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):  # the model is saved: its checkpoints are spent
            shutil.rmtree(done, ignore_errors=True)
    merged_dir = None
    if config.use_lora and config.merge_lora:
        merged_dir = out_dir / MERGED_DIR
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            save_merged(out_dir, merged_dir)
    log_history = list(trainer.state.log_history)
    meta = run_metadata(base_model=builtin_name(str(model)), base_path=resolve_model_path(model), seed=config.seed, config=config.identity(),
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
            "n_heldout": len(held_rows), "config": config.identity(), "metrics": result.metrics,
            "log_history": result.log_history, "heldout": {"before": before, "after": after},
            "adapter": config.use_lora, "merged_dir": str(merged_dir) if merged_dir else None,
            "world_size": trainer.args.world_size,
        }))
    return result
