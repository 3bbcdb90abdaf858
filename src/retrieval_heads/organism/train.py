"""Train the model organism: a small multilingual Llama with real retrieval heads, on CPU.

Usage::

    # the shipped checkpoint: every stage of recipes/, each continuing from the previous one
    python -m retrieval_heads.organism.train --recipe shipped --out runs/organism
    python -m retrieval_heads.organism.train --out /tmp/o --steps 20 --n-layers 2   # a smoke run

The defaults are a one-run version of that recipe that has not been validated.

Recipe (see ``docs/organism.md``): a byte-level BPE tokenizer trained on the
synthetic corpus; a stock ``LlamaForCausalLM`` from scratch (GQA, tied
embeddings); a length curriculum (short contexts first, up to 1024 tokens);
loss = mean cross-entropy on the answer tokens (answer, newline, EOS) plus
``lm_weight`` x mean cross-entropy on all other tokens; per-sample head dropout
(every query head's output zeroed with probability ``head_dropout`` during
training, through a forward pre-hook on ``o_proj``) so that random heads are
redundant; per-head dropout (``head_dropout_overrides``) and fresh draws of
chosen heads (``reinit_heads``) concentrate retrieval in the heads that are
never dropped (stages 11-13). Everything is seeded: same config, same checkpoint.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..artifacts import ResumeMismatchError, atomic_write_bytes, atomic_write_json, settings_diff
from ..heads import Head, check_heads
from .corpus import ANSWER_TEMPLATE, TASKS, CorpusGenerator, Example
from .lexicon import Lexicon, load_lexicon
from .tokenizer import make_generator, select_lexicon, train_tokenizer

LEXICON_FILE = "lexicon.jsonl"
COPY_TASK = "copy"  # training-only: random tokens, then the same tokens again (see CopyExample)
TRAINING_FILE = "training.json"
RESUME_DIR = "resume"  # OUT/resume: tokenizer, lexicon and state.pt of an unfinished run
RESUME_STATE = "state.pt"
# fields that do not change what a run trains (stop_at only says where it ends)
RUN_ONLY_FIELDS = ("threads", "log_every", "snapshot_every", "checkpoint_every")


@dataclass
class OrganismTrainConfig:
    """How to train the organism.

    Output: ``out_dir``. Model: ``n_layers``, ``n_heads``, ``n_kv_heads``,
    ``head_dim``, ``intermediate_size``, ``rope_theta``. Tokenizer:
    ``vocab_size``, ``max_token_length``, ``tokenizer_texts``. Data:
    ``max_per_category``, ``task_weights``, ``curriculum``. Optimisation:
    ``steps``, ``tokens_per_step``, ``lr``, ``warmup_steps``, ``min_lr_ratio``,
    ``weight_decay``, ``lm_weight``, ``head_dropout``. Run: ``seed``, ``threads``.
    """

    out_dir: str = field(default="runs/organism", metadata={"help": "where the checkpoint is saved"})
    seed: int = field(default=0, metadata={"help": "seeds torch, data and tokenizer corpus"})
    n_layers: int = field(default=4, metadata={"help": "decoder layers"})
    n_heads: int = field(default=16, metadata={"help": "query heads per layer"})
    n_kv_heads: int = field(default=4, metadata={"help": "key/value heads per layer (GQA)"})
    head_dim: int = field(default=16, metadata={"help": "per-head width"})
    hidden_size: int = field(default=0, metadata={"help": "residual width; 0 means n_heads * head_dim"})
    intermediate_size: int = field(default=512, metadata={"help": "MLP width"})
    rope_theta: float = field(default=10_000.0, metadata={"help": "RoPE base"})
    vocab_size: int = field(default=3072, metadata={"help": "BPE vocabulary size"})
    max_token_length: int = field(default=6, metadata={"help": "longest BPE token, in byte symbols"})
    tokenizer_texts: int = field(default=3000, metadata={"help": "corpus prompts the tokenizer is trained on"})
    max_per_category: int = field(default=40, metadata={"help": "lexicon entries kept per category"})
    task_weights: dict[str, float] = field(
        default_factory=lambda: {"mono": 0.2, "cross": 0.3, "multihop": 0.2, "parametric": 0.12, "multikey": 0.18},
        metadata={"help": "sampling weight of each task"},
    )
    passkey_rate: float = field(
        default=0.0, metadata={"help": "share of mono/multikey questions that ask for a random-number passkey"}
    )
    curriculum: list[tuple[float, int, int]] = field(
        default_factory=lambda: [(0.3, 32, 128), (0.55, 64, 384), (1.0, 128, 1024)],
        metadata={"help": "stages (until fraction of steps, min length, max length[, task weights]); lengths in "
                          "tokens, the optional task weights replace task_weights in that stage"},
    )
    steps: int = field(default=2600, metadata={"help": "optimizer steps"})
    tokens_per_step: int = field(default=2048, metadata={"help": "tokens per batch (batch = this // length)"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (AdamW)"})
    warmup_steps: int = field(default=80, metadata={"help": "linear warm-up steps"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine decays to lr * this"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (matrices only)"})
    lm_weight: float = field(default=0.1, metadata={"help": "weight of the LM loss on non-answer tokens"})
    extra_questions: int = field(
        default=3, metadata={"help": "up to this many extra question/answer blocks per training example"}
    )
    q_weight: float = field(default=1.0, metadata={"help": "weight of the LM loss on the question tokens"})
    copy_weight: float = field(default=1.0, metadata={"help": "weight of the LM loss on a copy example's repeat"})
    lm_sample: float = field(default=0.25, metadata={"help": "share of non-answer tokens the LM loss scores"})
    head_dropout: float = field(default=0.1, metadata={"help": "per-sample probability to zero a head"})
    head_dropout_ramp: tuple[float, float] = field(
        default=(0.3, 0.45), metadata={"help": "head dropout is 0 before, full after (fractions of steps)"}
    )
    head_dropout_overrides: dict[str, float] = field(
        default_factory=dict,
        metadata={"help": "per-head dropout probability replacing head_dropout, keyed 'layer.head' (ramped alike)"},
    )
    reinit_heads: list[str] = field(
        default_factory=list,
        metadata={"help": "query heads ('layer.head') whose q_proj rows and o_proj columns are drawn afresh at the "
                          "start (after init_from): a head that learned to copy unlearns it"},
    )
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    log_every: int = field(default=50, metadata={"help": "steps between log lines"})
    stop_at: int = field(
        default=0, metadata={"help": "stop (and save) after this many steps; the schedules still span `steps`"}
    )
    init_from: str = field(
        default="", metadata={"help": "start from this checkpoint's weights (same tokenizer settings) instead of scratch"}
    )
    snapshot_every: int = field(
        default=0, metadata={"help": "save the model to OUT/snapshots/step-N every this many steps (0: never)"}
    )
    checkpoint_every: int = field(
        default=200, metadata={"help": "save a resumable training state to OUT/resume every this many steps "
                                       "(0: never); the same run started again continues from it"}
    )

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise ValueError("n_heads must be a multiple of n_kv_heads")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError("head_dropout must be in [0, 1)")
        if self.lm_weight < 0 or not 0.0 <= self.lm_sample <= 1.0:
            raise ValueError("lm_weight must be >= 0 and lm_sample in [0, 1]")
        self.curriculum = [tuple(c) for c in self.curriculum]  # JSON round-trips give lists
        for weights in [self.task_weights] + [c[3] for c in self.curriculum if len(c) > 3]:
            if set(weights) - {*TASKS, COPY_TASK} or not any(w > 0 for w in weights.values()):
                raise ValueError(f"task weights: known tasks {(*TASKS, COPY_TASK)}, at least one weight > 0")
        self.head_dropout_ramp = tuple(self.head_dropout_ramp)
        check_heads([Head.parse(key) for key in self.head_dropout_overrides], self.n_layers, self.n_heads)
        check_heads([Head.parse(key) for key in self.reinit_heads], self.n_layers, self.n_heads)
        for key, p in self.head_dropout_overrides.items():
            if not 0.0 <= p < 1.0:
                raise ValueError(f"head_dropout_overrides: {key!r} must be in [0, 1), got {p}")
        if not 0.0 <= self.head_dropout_ramp[0] <= self.head_dropout_ramp[1] <= 1.0:
            raise ValueError("head_dropout_ramp: 0 <= start <= end <= 1")
        ends = [c[0] for c in self.curriculum]
        if not self.curriculum or ends != sorted(ends) or ends[-1] < 1.0:
            raise ValueError("curriculum fractions must increase and end at 1.0")
        if any(len(c) not in (3, 4) or c[1] < 32 or c[2] < c[1] for c in self.curriculum):
            raise ValueError("curriculum stages: (until, min length, max length[, task weights]), 32 <= min <= max")
        if self.checkpoint_every < 0 or self.snapshot_every < 0:
            raise ValueError("checkpoint_every and snapshot_every must be >= 0")
        if not 0 <= self.stop_at <= self.steps:
            raise ValueError("stop_at must be in [0, steps]")
        if self.steps < 1 or self.tokens_per_step < max(c[2] for c in self.curriculum):
            raise ValueError("need steps >= 1 and tokens_per_step >= the longest curriculum length")


# --- head dropout ------------------------------------------------------------------------------------
class HeadDropout:
    """Per-sample head dropout: zero each (sample, head) slice of every ``o_proj`` input with
    probability ``p`` (settable while training), only in training mode.

    ``p`` is a float (every head) or a ``[n_layers, n_heads]`` tensor (one probability per head).
    Survivors are scaled by 1/(1-p) (inverted dropout), so eval needs no rescaling.
    Use as ``hd = HeadDropout(model, 0.1)``; ``hd.p = ...``; ``hd.remove()``.
    """

    def __init__(self, model: LlamaForCausalLM, p: float | torch.Tensor) -> None:
        self.p = p
        self.handles = add_head_dropout(model, lambda: self.p)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def add_head_dropout(model: LlamaForCausalLM, p) -> list[torch.utils.hooks.RemovableHandle]:
    """Register the head-dropout pre-hooks; ``p`` is a float, a ``[n_layers, n_heads]`` tensor of
    per-head probabilities, or a zero-argument callable returning either."""
    n_heads, head_dim = model.config.num_attention_heads, model.config.head_dim
    get_p = p if callable(p) else (lambda: p)

    def make_hook(layer: int):
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]):
            p = get_p()
            p = p[layer].view(1, 1, n_heads, 1) if isinstance(p, torch.Tensor) else torch.tensor(float(p))
            if not module.training or not bool((p > 0).any()):
                return None
            x = args[0]  # (B, T, n_heads * head_dim)
            keep = (torch.rand(x.shape[0], 1, n_heads, 1) >= p).to(x.dtype) / (1 - p).to(x.dtype)
            return (x.view(*x.shape[:2], n_heads, head_dim).mul(keep).view_as(x),) + args[1:]

        return hook

    return [layer.self_attn.o_proj.register_forward_pre_hook(make_hook(i))
            for i, layer in enumerate(model.model.layers)]


# --- batches -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CopyExample:
    """Training-only copy example: random ordinary tokens, then ``\\n\\n`` and the same tokens again;
    the repeat is scored (role 4), a pure induction signal. (In the experiments of docs/organism.md
    it did not form induction heads within a few hundred steps by itself; the shipped recipe
    does not use it.)"""

    ids: tuple[int, ...]
    task: str = COPY_TASK


def encode(tokenizer: PreTrainedTokenizerFast, ex: Example | CopyExample) -> tuple[list[int], list[int]]:
    """Token ids of BOS + prompt + answer [+ extra question/answer blocks] + EOS, and a role per token.

    Roles: 0 context, 1 question (and answer lead), 2 main answer, 3 extra answer (extra
    blocks are :func:`~.corpus.question_block` + ``" {a}\n"``, a training-only augmentation),
    4 the repeat of a :class:`CopyExample`. EOS is part of the main answer only when no extra
    block follows it (otherwise "another block or EOS?" is a guess, not an answer).
    """
    if isinstance(ex, CopyExample):
        sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
        ids = [tokenizer.bos_token_id, *ex.ids, *sep]
        return ids + list(ex.ids), [0] * len(ids) + [4] * len(ex.ids)
    enc = tokenizer(ex.prompt, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    q_char = ex.prompt.rindex("\n\nQuestion: ")
    q_start = next(i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a >= q_char)
    roles = [0] * q_start + [1] * (len(ids) - q_start)

    def add(text: str, role: int) -> None:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(piece)
        roles.extend([role] * len(piece))

    add(ex.target, 2)
    for block, a in ex.extra_qa:
        add(block, 1)
        add(ANSWER_TEMPLATE.format(answer=a), 3)
    ids.append(tokenizer.eos_token_id)
    # after extra blocks, whether another block or EOS follows is a guess: not part of the main answer
    roles.append(3 if ex.extra_qa else 2)
    return ids, roles


def make_batch(
    tokenizer: PreTrainedTokenizerFast, examples: list[Example]
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and per-token ``role`` (see :func:`encode`)."""
    enc = [encode(tokenizer, ex) for ex in examples]
    width = max(len(ids) for ids, _ in enc)
    ids = torch.full((len(enc), width), tokenizer.pad_token_id)
    att = torch.zeros(len(enc), width, dtype=torch.long)
    role = torch.full((len(enc), width), -1)
    for i, (row, r) in enumerate(enc):
        ids[i, : len(row)] = torch.tensor(row)
        att[i, : len(row)] = 1
        role[i, : len(row)] = torch.tensor(r)
    return {"input_ids": ids, "attention_mask": att, "role": role}


def stage_at(cfg: OrganismTrainConfig, step: int) -> tuple:
    """The curriculum stage ``(until, min length, max length[, task weights])`` of ``step``."""
    frac = step / cfg.steps
    return next(c for c in cfg.curriculum if frac < c[0] or c[0] >= 1.0)


def step_length(cfg: OrganismTrainConfig, step: int, rng: random.Random) -> int:
    """The prompt length (tokens) of this step's batch, from the curriculum."""
    _, lo, hi = stage_at(cfg, step)[:3]
    return rng.randrange(lo, hi + 1, 16) if hi > lo else lo


def sample_examples(
    gen: CorpusGenerator, tokenizer: PreTrainedTokenizerFast, cfg: OrganismTrainConfig, rng: random.Random,
    length: int, n: int, task_weights: dict[str, float] | None = None,
) -> list[Example | CopyExample]:
    """``n`` training examples of about ``length`` tokens, tasks drawn by ``task_weights`` (default
    ``cfg.task_weights``)."""
    tasks, weights = zip(*(task_weights or cfg.task_weights).items(), strict=True)
    out = []
    for _ in range(n):
        task = rng.choices(tasks, weights)[0]
        if task == COPY_TASK:  # random ordinary tokens (ids past the special ones), half the length, twice
            first = len(tokenizer.all_special_ids)
            out.append(CopyExample(tuple(rng.randrange(first, len(tokenizer)) for _ in range(length // 2))))
        else:
            out.append(gen.example(task, rng, length, split="train",
                                   extra_questions=rng.randint(0, cfg.extra_questions)))
    return out


def forward_losses(
    model: LlamaForCausalLM, batch: dict[str, torch.Tensor], lm_sample: float, gen: torch.Generator
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Mean cross-entropies by role (``answer``, ``question``, ``copy``, and ``lm`` on a
    ``lm_sample`` share of the context tokens) and the per-sample teacher-forced exact match of
    the main answer (of the repeated passage, for ``copy`` examples).

    Logits are computed only for the rows that are scored (the vocabulary
    projection is a fifth of the model's cost at this size).
    """
    ids, valid = batch["input_ids"], batch["attention_mask"] > 0
    # right padding + causal attention: real tokens never see pads, so no mask is needed
    # and SDPA keeps its fast causal path
    hidden = model.model(input_ids=ids).last_hidden_state  # (B, T, D)
    role = batch["role"][:, 1:]  # row t predicts token t+1
    valid = valid[:, 1:]
    groups = {"answer": (role == 2) | (role == 3), "question": role == 1, "copy": role == 4}
    scored = groups["answer"] | groups["question"] | groups["copy"]
    groups["lm"] = valid & ~scored & (torch.rand(role.shape, generator=gen) < lm_sample)
    rows = scored | groups["lm"]
    logits = model.lm_head(hidden[:, :-1][rows])  # (n_rows, V)
    target = ids[:, 1:][rows]
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    losses = {}
    for name, mask in groups.items():
        m = mask[rows]
        losses[name] = ce[m].mean() if m.any() else ce.new_zeros(())
    wrong = torch.zeros_like(role, dtype=torch.bool)
    wrong[rows] = (logits.argmax(-1) != target) & ((role == 2) | (role == 4))[rows]
    return losses, ~wrong.any(1)


# --- the run -----------------------------------------------------------------------------------------
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
    texts = []
    for _ in range(cfg.tokenizer_texts):
        ex = draft.example(rng.choice(TASKS), rng, rng.choice((128, 256, 384)))
        texts.append(ex.prompt + ex.target)
    tokenizer = train_tokenizer(texts, cfg.vocab_size, cfg.max_token_length)
    lexicon = select_lexicon(full, tokenizer, cfg.max_per_category)
    gen = make_generator(lexicon, tokenizer)
    gen.passkey_rate = cfg.passkey_rate
    return tokenizer, lexicon, gen


def load_tokenizer(directory: str | Path, passkey_rate: float = 0.0):
    """The tokenizer, lexicon and corpus generator saved in ``directory`` (a checkpoint, or a
    run's ``resume`` folder)."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    for loading_only in ("is_local", "local_files_only"):  # not settings: keep them out of the saved config
        tokenizer.init_kwargs.pop(loading_only, None)
    lexicon = Lexicon.from_jsonl(Path(directory) / LEXICON_FILE)
    gen = make_generator(lexicon, tokenizer)
    gen.passkey_rate = passkey_rate
    return tokenizer, lexicon, gen


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


def reinitialize_heads(model: LlamaForCausalLM, heads: list[Head], seed: int) -> None:
    """Draw the ``q_proj`` rows and ``o_proj`` columns of ``heads`` afresh (normal, the config's
    ``initializer_range``, seeded): each becomes a fresh query head on its group's shared keys and
    values, with whatever it had learned to attend to forgotten."""
    gen = torch.Generator().manual_seed(seed)
    std, dim = model.config.initializer_range, model.config.head_dim
    with torch.no_grad():
        for head in heads:
            attn = model.model.layers[head.layer].self_attn
            rows = slice(head.head * dim, (head.head + 1) * dim)
            q, o = attn.q_proj.weight, attn.o_proj.weight
            q[rows] = torch.randn(q[rows].shape, generator=gen, dtype=q.dtype) * std
            o[:, rows] = torch.randn(o[:, rows].shape, generator=gen, dtype=o.dtype) * std


def grown_head_index(head: int, old_heads: int, new_heads: int, kv_heads: int) -> int:
    """Where query head ``head`` of a layer with ``old_heads`` lands among ``new_heads`` by
    :func:`grow_query_heads`: it keeps its key/value group and its place in the group.

    >>> [grown_head_index(h, 16, 32, 4) for h in (0, 3, 4, 15)]
    [0, 3, 8, 27]
    """
    old_group, new_group = old_heads // kv_heads, new_heads // kv_heads
    return head // old_group * new_group + head % old_group


def grow_query_heads(source: LlamaForCausalLM, target: LlamaForCausalLM, seed: int) -> None:
    """Load ``source`` into ``target``, a copy with more query heads per layer (same layers, widths,
    key/value heads, head_dim), without changing what the model computes.

    Every old head keeps its key/value group (GQA groups are contiguous runs of query heads) at
    the index :func:`grown_head_index` gives; the added heads get fresh ``q_proj`` rows (normal,
    ``initializer_range``, seeded) and zero ``o_proj`` columns, so the grown model's logits equal the
    source's until training moves them. Raises ``ValueError`` for any other shape change.
    """
    a, b = source.config, target.config
    same = ("num_hidden_layers", "hidden_size", "num_key_value_heads", "head_dim", "vocab_size",
            "intermediate_size")
    if any(getattr(a, k) != getattr(b, k) for k in same) or b.num_attention_heads <= a.num_attention_heads \
            or b.num_attention_heads % b.num_key_value_heads:
        raise ValueError(f"can only add query heads (same {', '.join(same)}); "
                         f"{a.num_attention_heads} -> {b.num_attention_heads} heads asked")
    old, new, kv, dim = a.num_attention_heads, b.num_attention_heads, a.num_key_value_heads, a.head_dim

    def span(head: int) -> slice:
        return slice(head * dim, (head + 1) * dim)

    moves = [(span(h), span(grown_head_index(h, old, new, kv))) for h in range(old)]  # (source, target)
    gen = torch.Generator().manual_seed(seed)
    state = source.state_dict()
    with torch.no_grad():
        for name, value in target.state_dict().items():
            if name.endswith("q_proj.weight"):  # rows per head; added heads: fresh queries
                value.copy_(torch.randn(value.shape, generator=gen) * b.initializer_range)
                for src, dst in moves:
                    value[dst] = state[name][src]
            elif name.endswith("o_proj.weight"):  # columns per head; added heads: silent
                value.zero_()
                for src, dst in moves:
                    value[:, dst] = state[name][:, src]
            else:
                value.copy_(state[name])


def head_dropout_at(cfg: OrganismTrainConfig, step: int) -> float | torch.Tensor:
    """0 until ``head_dropout_ramp[0]`` of the steps, then linear up to ``head_dropout`` at ``[1]``;
    a ``[n_layers, n_heads]`` tensor when ``head_dropout_overrides`` sets some heads apart."""
    a, b = cfg.head_dropout_ramp
    frac = step / cfg.steps
    ramp = min(1.0, max(0.0, (frac - a) / max(b - a, 1e-9)))
    if not cfg.head_dropout_overrides:
        return cfg.head_dropout * ramp
    p = torch.full((cfg.n_layers, cfg.n_heads), cfg.head_dropout)
    for key, value in cfg.head_dropout_overrides.items():
        p[Head.parse(key)] = value
    return p * ramp


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
    atomic_write_json(out / TRAINING_FILE, record)  # last, and whole: train_recipe reads it as "stage done"


def _resume_settings(config: dict) -> dict:
    """What a resumed run must share with the run it continues (it may end elsewhere: stop_at)."""
    return {k: v for k, v in config.items() if k not in (*RUN_ONLY_FIELDS, "stop_at")}


def load_resume_state(cfg: OrganismTrainConfig) -> dict | None:
    """The saved state of an unfinished run of ``cfg`` in ``OUT/resume``, or ``None`` if there is none.

    Raises :class:`~retrieval_heads.artifacts.ResumeMismatchError` when the state belongs to a
    run with other settings (naming each) or has already passed this run's end, and
    ``ValueError`` when it cannot be read; either way nothing is deleted.
    """
    folder = Path(cfg.out_dir) / RESUME_DIR
    path = folder / RESUME_STATE
    if not path.is_file():
        return None
    hint = f"delete {folder} to train from the start"
    try:
        state = torch.load(path, weights_only=True)
    except Exception as err:  # a damaged file: say which and how to go on
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a readable training state ({reason}); {hint}") from err
    now = json.loads(json.dumps(asdict(cfg)))
    diff = settings_diff(_resume_settings(state["config"]), _resume_settings(now))
    if diff:
        raise ResumeMismatchError(f"{folder} holds an unfinished run with other settings: "
                                  + "; ".join(diff) + f". Train with those settings to continue it, or {hint}.")
    if state["step"] >= (cfg.stop_at or cfg.steps):
        raise ResumeMismatchError(f"{folder} has already trained {state['step']} steps, past this run's end "
                                  f"({cfg.stop_at or cfg.steps}); raise stop_at, or {hint}.")
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

    >>> cfg = OrganismTrainConfig(out_dir="/tmp/organism-doc", steps=2, n_layers=1, n_heads=4,
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
    resumed = load_resume_state(cfg)
    if resumed:  # an interrupted run of this config: its own tokenizer, weights, optimizer and RNGs
        tokenizer, lexicon, gen = load_tokenizer(out / RESUME_DIR, cfg.passkey_rate)
        model = build_model(cfg, tokenizer)
        model.load_state_dict(resumed["model"])
        print(f"resuming {out} at step {resumed['step']}", file=sys.stderr, flush=True)
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
    end = cfg.stop_at or cfg.steps
    model.train()
    columns = [
        TextColumn("[bold]organism"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.3f} lm {task.fields[lm]:.2f} len {task.fields[len]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    ]
    with Progress(*columns) as progress:
        bar = progress.add_task("train", total=end, completed=first, loss=float("nan"), lm=float("nan"), len=0)
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
            progress.update(bar, advance=1, loss=losses["answer"].item(), lm=losses["lm"].item(), len=length)
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
    record = {"config": asdict(cfg), "wall_time_s": round(wall, 1),
              "cpu_time_s": round(time.process_time() - c0, 1), "log": log,
              "n_params": sum(p.numel() for p in model.parameters()), "lexicon_entries": len(lexicon)}
    if resumed_at:
        record["resumed_at"] = resumed_at  # steps at which an interrupted run was continued
    save(model, tokenizer, lexicon, out, record)
    shutil.rmtree(out / RESUME_DIR, ignore_errors=True)  # finished: nothing left to resume
    return out


RECIPES = Path(__file__).parent / "recipes"


def recipe_stages(recipe_dir: str | Path = RECIPES) -> list[Path]:
    """The stage files of a recipe (``stage1.json``, ``stage2.json``, ...), in order."""
    stages = sorted(Path(recipe_dir).glob("stage*.json"), key=lambda p: int(p.stem.removeprefix("stage")))
    if not stages:
        raise FileNotFoundError(f"no stage*.json in {recipe_dir}")
    return stages


def _settings(config: dict) -> dict:
    """A stage's config without the fields that do not change what it trains."""
    return {k: v for k, v in config.items() if k not in RUN_ONLY_FIELDS}


def train_recipe(out: str | Path, recipe_dir: str | Path = RECIPES, threads: int | None = None) -> Path:
    """Train every stage of a recipe in order, each continuing from the previous one, and return ``out``.

    The default recipe is the one that trained the shipped checkpoint (``recipes/``). Stage *i*
    writes ``OUT-stages/stageI`` and starts from stage *i-1*'s output; the last writes ``out``.
    Resumable at stage granularity: a stage whose directory holds a ``training.json`` (written
    last) with the same config is not trained again. The final ``training.json`` gains
    ``stages`` (every stage's steps and times) and ``recipe`` (where it came from, total time).
    """
    out = Path(out)
    stages = recipe_stages(recipe_dir)
    previous, times = "", []
    for i, stage_file in enumerate(stages, start=1):
        values = json.loads(stage_file.read_text())
        values["out_dir"] = str(out if i == len(stages) else out.parent / f"{out.name}-stages" / f"stage{i}")
        values["init_from"] = previous
        if threads is not None:
            values["threads"] = threads
        cfg = OrganismTrainConfig(**values)
        done = Path(cfg.out_dir) / TRAINING_FILE
        record = json.loads(done.read_text()) if done.is_file() else {}
        if _settings(record.get("config", {})) != _settings(json.loads(json.dumps(asdict(cfg)))):
            print(f"stage {i}/{len(stages)} ({stage_file.name}): training", file=sys.stderr, flush=True)
            train_organism(cfg)
            record = json.loads(done.read_text())
        else:
            print(f"stage {i}/{len(stages)} ({stage_file.name}): already trained, kept", file=sys.stderr, flush=True)
        times.append({"recipe": stage_file.name, "steps": cfg.steps, "wall_time_s": record["wall_time_s"],
                      "cpu_time_s": record["cpu_time_s"]})
        previous = cfg.out_dir
    record["stages"] = times  # the same entry as in the shipped checkpoint's training.json
    record["recipe"] = {"source": str(recipe_dir), "total_wall_time_s": round(sum(t["wall_time_s"] for t in times), 1)}
    atomic_write_json(out / TRAINING_FILE, record)
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(OrganismTrainConfig):
        if f.type in ("int", "float", "str"):
            kind = {"int": int, "float": float, "str": str}[f.type]
            ap.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None, help=f.metadata.get("help"))
    ap.add_argument("--config", help="JSON file with OrganismTrainConfig fields (flags override it)")
    ap.add_argument("--out", dest="out_dir_alias", help="alias of --out-dir")
    ap.add_argument("--recipe", help="train every stage of a recipe: 'shipped' (the one that trained the "
                                     "built-in checkpoint) or a directory of stage1.json, stage2.json, ...")
    return ap


def main(argv: list[str] | None = None) -> Path:
    """Command-line entry point: ``python -m retrieval_heads.organism.train --out DIR``."""
    args = vars(_parser().parse_args(argv))
    config_path, alias, recipe = args.pop("config"), args.pop("out_dir_alias"), args.pop("recipe")
    if recipe:
        if config_path or any(v is not None for k, v in args.items() if k not in ("out_dir", "threads")):
            raise SystemExit("--recipe takes only --out and --threads (each stage file holds its own settings)")
        recipe_dir = RECIPES if recipe == "shipped" else Path(recipe)
        try:
            recipe_stages(recipe_dir)
        except FileNotFoundError:
            raise SystemExit(f"--recipe: {recipe!r} is neither 'shipped' nor a directory of stage1.json, "
                             "stage2.json, ...") from None
        out = train_recipe(alias or args["out_dir"] or "runs/organism", recipe_dir, args["threads"])
        print(f"saved {out}")
        return out
    values = json.loads(Path(config_path).read_text()) if config_path else {}
    values.update({k: v for k, v in args.items() if v is not None})
    if alias:
        values["out_dir"] = alias
    out = train_organism(OrganismTrainConfig(**values))
    print(f"saved {out}")
    return out


if __name__ == "__main__":
    main()
