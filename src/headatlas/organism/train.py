"""Train the model organism: a small multilingual Llama with real retrieval heads, on CPU.

Usage::

    # the shipped checkpoint: every stage of recipes/, each continuing from the previous one
    headatlas organism train --out runs/organism      # = --recipe shipped
    headatlas organism train --out /tmp/o --steps 20 --n-layers 2   # one run: a smoke test

One run's defaults (any setting flag, or ``--config``) are a one-stage version of that recipe that
has not been validated.

Recipe (see ``docs/organism.md``): a byte-level BPE tokenizer trained on the
synthetic corpus; a stock ``LlamaForCausalLM`` from scratch (GQA, tied
embeddings); a length curriculum (short contexts first, up to 1024 tokens);
loss = mean cross-entropy on the answer tokens (answer, newline, EOS) plus
``lm_weight`` x mean cross-entropy on all other tokens (:mod:`.batches`); per-sample head dropout
(every query head's output zeroed with probability ``head_dropout`` during
training, through a forward pre-hook on ``o_proj``) so that random heads are
redundant; per-head dropout (``head_dropout_overrides``) and fresh draws of
chosen heads (``reinit_heads``) concentrate retrieval in the heads that are
never dropped (stages 11-13; :mod:`.head_surgery`). Everything is seeded: same config, same
checkpoint, also across an interruption (``checkpoint_every``). The settings are
:class:`~.train_config.OrganismTrainConfig`; stage files are run by :mod:`.recipe`.
"""

from __future__ import annotations

import io
import json
import math
import random
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..heads import Head
from ..lexicon import Lexicon, load_lexicon
from ..runs import ResumeMismatchError, Run, atomic_write_bytes, atomic_write_json, open_run, stamp, track
from .batches import forward_losses, make_batch, sample_examples, stage_at, step_length
from .corpus import TASKS, CorpusGenerator
from .head_surgery import HeadDropout, grow_query_heads, head_dropout_at, reinitialize_heads
from .tokenizer import make_generator, select_lexicon, train_tokenizer
from .train_config import OrganismTrainConfig, training_settings

LEXICON_FILE = "lexicon.jsonl"
TRAINING_FILE = "training.json"
RESUME_DIR = "resume"  # OUT/resume: tokenizer, lexicon and state.pt of an unfinished run
RESUME_STATE = "state.pt"


def build_tokenizer(cfg: OrganismTrainConfig):
    """Train the tokenizer on corpus text, then pick the working lexicon and its generator.

    With ``init_from`` the checkpoint's own tokenizer and lexicon are used, never a retrained one:
    a tokenizer trained anew on text from a changed corpus generator can have the same size and other
    token ids, which would silently scramble the loaded embeddings.
    """
    if cfg.init_from:
        return load_tokenizer(cfg.init_from, cfg.passkey_rate)
    full = load_lexicon()
    draft = CorpusGenerator(full)
    rng = random.Random(cfg.seed + 1)
    examples = (draft.example(rng.choice(TASKS), rng, rng.choice((128, 256, 384))) for _ in range(cfg.tokenizer_texts))
    tokenizer = train_tokenizer([ex.prompt + ex.target for ex in examples], cfg.vocab_size, cfg.max_token_length)
    lexicon = select_lexicon(full, tokenizer, cfg.max_per_category)
    return tokenizer, lexicon, make_generator(lexicon, tokenizer, passkey_rate=cfg.passkey_rate)


def load_tokenizer(directory: str | Path, passkey_rate: float = 0.0):
    """The tokenizer, lexicon and corpus generator saved in ``directory`` (a checkpoint, or a
    run's ``resume`` folder)."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    for loading_only in ("is_local", "local_files_only"):  # not settings: keep them out of the saved config
        tokenizer.init_kwargs.pop(loading_only, None)
    lexicon = Lexicon.from_jsonl(Path(directory) / LEXICON_FILE)
    return tokenizer, lexicon, make_generator(lexicon, tokenizer, passkey_rate=passkey_rate)


def build_model(cfg: OrganismTrainConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A fresh, seeded Llama sized by ``cfg`` (tied embeddings, GQA)."""
    mcfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size or cfg.n_heads * cfg.head_dim,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(mcfg)


def lr_at(cfg: OrganismTrainConfig, step: int) -> float:
    """Linear warm-up then cosine decay to ``lr * min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def save(model: LlamaForCausalLM, tokenizer, lexicon, out: Path, record: dict) -> None:
    """Save model (fp16 safetensors, loads as float32), tokenizer, lexicon and the training record."""
    out.mkdir(parents=True, exist_ok=True)
    newline = tokenizer.convert_tokens_to_ids("Ċ")
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, newline],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,  # no length default: callers (lm-eval passes max_length) set their own
    )
    # an fp16 copy: the live weights stay float32 (a snapshot mid-run must not change training)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    model.save_pretrained(out, state_dict={k: v.half() for k, v in model.state_dict().items() if k not in tied})
    conf = json.loads((out / "config.json").read_text())
    conf["dtype"] = "float32"  # stored in fp16 to stay small; compute in fp32 on CPU
    (out / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
    tokenizer.save_pretrained(out)
    lexicon.to_jsonl(out / LEXICON_FILE)
    atomic_write_json(out / TRAINING_FILE, record)  # last, and whole: it marks the run finished


def open_training(cfg: OrganismTrainConfig) -> Run:
    """Open ``cfg.out_dir`` for this training run (:func:`headatlas.runs.open_run`): a folder that holds
    a run with other settings (``stop_at`` and :data:`RUN_ONLY_FIELDS` aside) is refused, naming each."""
    settings = training_settings(json.loads(json.dumps(asdict(cfg))), "stop_at")  # a run may end elsewhere
    return open_run(cfg.out_dir, "organism-train", settings, discard=(RESUME_DIR, TRAINING_FILE), model="organism",
                    seed=cfg.seed, hint=f"Train with those settings to continue it, or delete {cfg.out_dir} to start over.")


def load_resume_state(run: Run, end: int) -> dict | None:
    """The saved state of the unfinished run in ``OUT/resume``, or ``None`` if there is none.

    Raises :class:`~headatlas.runs.ResumeMismatchError` when the state has already passed
    this run's end ``end``, and ``ValueError`` when it cannot be read; either way nothing is deleted.
    """
    folder = run.dir / RESUME_DIR
    path = folder / RESUME_STATE
    if not run.resumed or not path.is_file():
        return None
    hint = f"delete {folder} to train from the start"
    try:
        state = torch.load(path, weights_only=True)
    except Exception as err:  # a damaged file: say which and how to go on
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a readable training state ({reason}); {hint}") from err
    if state["step"] >= end:
        raise ResumeMismatchError(f"{folder} has already trained {state['step']} steps, past this run's end "
                                  f"({end}); raise stop_at, or {hint}.")
    return state


def save_resume_state(out: Path, tokenizer, lexicon, state: dict) -> None:
    """Save what :func:`train_organism` needs to continue a run exactly (``OUT/resume``);
    ``state.pt``, written atomically and last, is what makes the folder a resumable run."""
    folder = out / RESUME_DIR
    if not (folder / RESUME_STATE).is_file():  # the first save of this run: its tokenizer and lexicon
        tokenizer.save_pretrained(folder)
        lexicon.to_jsonl(folder / LEXICON_FILE)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(folder / RESUME_STATE, buffer.getvalue())


def train_organism(config: OrganismTrainConfig) -> Path:
    """Train the organism as ``config`` says and save an HF checkpoint in ``config.out_dir``.

    The folder is a run (:func:`open_training`): the same config again resumes an interrupted run
    from its last ``checkpoint_every`` state, or keeps a finished one; other settings are refused.

    >>> import tempfile
    >>> cfg = OrganismTrainConfig(out_dir=tempfile.mkdtemp() + "/organism-doc", steps=2, n_layers=1, n_heads=4,
    ...     n_kv_heads=2, intermediate_size=64, vocab_size=512, tokenizer_texts=100, tokens_per_step=256,
    ...     curriculum=[(1.0, 64, 128)], log_every=1)
    >>> train_organism(cfg).name  # the progress bar's last state prints first
    organism ... 2/2 loss ...
    'organism-doc'
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cfg = config
    torch.set_num_threads(cfg.threads)
    t0, c0 = time.time(), time.process_time()
    out = Path(cfg.out_dir)
    end = cfg.stop_at or cfg.steps
    run = open_training(cfg)
    finished = json.loads((out / TRAINING_FILE).read_text()) if run.resumed and (out / TRAINING_FILE).is_file() else None
    if finished is not None:  # this very run is done: nothing to train
        steps = finished.get("steps_done", finished["config"]["stop_at"] or finished["config"]["steps"])
        if steps != end:
            raise ResumeMismatchError(f"{out} holds this run finished after {steps} steps, not {end}; "
                                      f"delete {out} to train it again.")
        print(f"{out}: resuming: {steps} of {end} steps done (already trained, kept)", file=sys.stderr, flush=True)
        return out
    resumed = load_resume_state(run, end)
    if resumed:  # an interrupted run of this config: its own tokenizer, weights, optimizer and RNGs
        tokenizer, lexicon, gen = load_tokenizer(out / RESUME_DIR, cfg.passkey_rate)
        model = build_model(cfg, tokenizer)
        model.load_state_dict(resumed["model"])
    else:
        tokenizer, lexicon, gen = build_tokenizer(cfg)
        model = build_model(cfg, tokenizer)
        if cfg.init_from:  # continue from a checkpoint trained with the same tokenizer settings
            start = LlamaForCausalLM.from_pretrained(cfg.init_from, dtype=torch.float32)
            if start.config.vocab_size != model.config.vocab_size:
                raise ValueError(f"{cfg.init_from} has another vocabulary than this config builds")
            if start.config.num_attention_heads == model.config.num_attention_heads:
                model.load_state_dict(start.state_dict())
            else:
                grow_query_heads(start, model, cfg.seed)
        reinitialize_heads(model, [Head.parse(key) for key in cfg.reinit_heads], cfg.seed)
    dropout = HeadDropout(model, 0.0)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8,
    )
    rng = random.Random(cfg.seed)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    log: list[dict] = []
    window: dict[str, list[float]] = defaultdict(list)
    first, resumed_at = 0, []
    if resumed:
        opt.load_state_dict(resumed["optimizer"])
        rng.setstate(resumed["rng"])
        data_gen.set_state(resumed["data_rng"])
        torch.set_rng_state(resumed["torch_rng"])  # head dropout draws from it
        log, window = resumed["log"], defaultdict(list, resumed["window"])
        first, resumed_at = resumed["step"], [*resumed["resumed_at"], resumed["step"]]
        t0, c0 = t0 - resumed["wall_s"], c0 - resumed["cpu_s"]
    model.train()
    progress = Progress(TextColumn("[bold]organism"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("loss {task.fields[loss]:.3f} lm {task.fields[lm]:.2f} len {task.fields[len]}"),
                        TimeElapsedColumn(), TimeRemainingColumn())
    with track("organism", end, first, progress=progress, loss=float("nan"), lm=float("nan"), len=0) as bar:
        for step in range(first, end):
            length = step_length(cfg, step, rng)
            examples = sample_examples(gen, tokenizer, cfg, rng, length, max(1, cfg.tokens_per_step // length),
                                       task_weights=(stage_at(cfg, step)[3:] or [None])[0])
            batch = make_batch(tokenizer, examples)
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step)
            dropout.p = head_dropout_at(cfg, step)
            losses, hit = forward_losses(model, batch, cfg.lm_sample, data_gen)
            loss = (losses["answer"] + cfg.q_weight * losses["question"] + cfg.lm_weight * losses["lm"]
                    + cfg.copy_weight * losses["copy"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            for name, value in losses.items():
                window["loss" if name == "answer" else name].append(value.item())
            for ex, h in zip(examples, hit.tolist(), strict=True):
                window["tf_" + ex.task].append(float(h))
            bar.advance(loss=losses["answer"].item(), lm=losses["lm"].item(), len=length)
            if (step + 1) % cfg.log_every == 0 or step + 1 == end:
                row = {"step": step + 1, "time_s": round(time.time() - t0, 1),
                       "cpu_s": round(time.process_time() - c0, 1), "length": length}
                row.update({k: round(sum(v) / len(v), 4) for k, v in sorted(window.items()) if v})
                log.append(row)
                if progress.console.is_terminal:
                    progress.console.print(json.dumps(row))
                else:  # logs redirected to a file: plain lines, flushed
                    print(json.dumps(row), file=sys.stderr, flush=True)
                window.clear()
            if cfg.snapshot_every and (step + 1) % cfg.snapshot_every == 0 and step + 1 < end:
                model.eval()
                save(model, tokenizer, lexicon, out / "snapshots" / f"step-{step + 1}",
                     {"config": asdict(cfg), "step": step + 1, "log": log})
                model.train()
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < end:
                save_resume_state(out, tokenizer, lexicon, {
                    "config": json.loads(json.dumps(asdict(cfg))), "step": step + 1, "resumed_at": resumed_at,
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng.getstate(),
                    "data_rng": data_gen.get_state(), "torch_rng": torch.get_rng_state(), "log": log,
                    "window": dict(window), "wall_s": time.time() - t0, "cpu_s": time.process_time() - c0,
                })
    dropout.remove()
    model.eval()
    wall = time.time() - t0
    record = {"config": asdict(cfg), "steps_done": end, "wall_time_s": round(wall, 1),
              "cpu_time_s": round(time.process_time() - c0, 1), "log": log,
              "n_params": sum(p.numel() for p in model.parameters()), "lexicon_entries": len(lexicon)}
    if resumed_at:
        record["resumed_at"] = resumed_at  # steps at which an interrupted run was continued
    save(model, tokenizer, lexicon, out, stamp("organism-train", {**record, "meta": run.meta}))
    shutil.rmtree(out / RESUME_DIR, ignore_errors=True)  # finished: nothing left to resume
    return out
