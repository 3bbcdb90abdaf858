"""Training batches of the organism: examples drawn by the curriculum, token roles, and the
per-role losses of one forward."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from .corpus import ANSWER_TEMPLATE, CorpusGenerator, Example
from .train_config import COPY_TASK, OrganismTrainConfig


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


def make_batch(tokenizer: PreTrainedTokenizerFast, examples: list[Example]) -> dict[str, torch.Tensor]:
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
