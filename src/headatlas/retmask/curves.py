"""Whether DPO trained: the curves of a RetMask run and the DPO metrics on held-out pairs before and after.

``training_curves.json`` holds ``train`` (TRL's metrics per logged step) and ``heldout`` (the same metrics on
pairs held out by :func:`split_pairs`, ``before`` and ``after`` training, from the DPO implicit reward summed
over TRL's response tokens). Reward accuracy counts a tie as half a win (0.5 before training);
``logp_accuracy`` is the share of pairs whose chosen response the policy alone prefers.

>>> rows = [{"id": str(i)} for i in range(10)]
>>> train, held = split_pairs(rows, 0.2, seed=0)
>>> len(train), len(held), sorted(r["id"] for r in held)
(8, 2, ['6', '9'])
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

FORMAT_NAME = "headatlas/dpo-curves"
FORMAT_VERSION = 1
CURVES_FILE = "training_curves.json"
CURVES_PLOT = "training_curves.png"

# TRL DPOTrainer log keys -> the names used in the curves file
TRAIN_KEYS = {
    "loss": "loss", "rewards/accuracies": "reward_accuracy", "rewards/margins": "reward_margin",
    "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected", "logps/chosen": "logp_chosen",
    "logps/rejected": "logp_rejected", "learning_rate": "learning_rate", "grad_norm": "grad_norm",
}


def split_pairs(rows: Sequence[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """``(train, heldout)``: ``floor(fraction * n)`` rows drawn with ``seed`` are held out (order kept).

    Fewer than 10 rows at 0.1 hold out none; training always keeps at least one row.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {fraction}")
    n_held = min(int(fraction * len(rows)), max(len(rows) - 1, 0))
    held = set(random.Random(seed).sample(range(len(rows)), n_held))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def train_curves(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-step training records of ``trainer.state.log_history`` with the DPO metrics, renamed."""
    out = []
    for h in log_history:
        if "loss" not in h or "step" not in h:
            continue  # evaluation records and the final summary
        row: dict[str, Any] = {"step": int(h["step"]), "epoch": h.get("epoch")}
        row.update({name: float(h[key]) for key, name in TRAIN_KEYS.items() if isinstance(h.get(key), (int, float))})
        out.append(row)
    return out


def _completion_logps(model: Any, prompt_ids: list[int], completion_ids: list[int], device: torch.device) -> float:
    """Summed log-probability of ``completion_ids`` after ``prompt_ids`` under ``model``."""
    ids = torch.tensor([prompt_ids + completion_ids], device=device)  # (1, T)
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()  # (C, V): rows predicting the completion
    logp = torch.log_softmax(logits, dim=-1)
    return float(logp.gather(1, torch.tensor(completion_ids, device=device)[:, None]).sum())


def pair_logps(model: Any, tokenized: Sequence[dict[str, list[int]]], reference: bool = False) -> torch.Tensor:
    """``(N, 2)`` summed log-probs of (chosen, rejected) for TRL-tokenized pairs (``prompt_ids``, ``chosen_ids``, ...).

    ``reference=True`` on a PEFT model disables the adapter (TRL's reference with LoRA).
    """
    device = next(model.parameters()).device
    context = model.disable_adapter() if reference and hasattr(model, "disable_adapter") else nullcontext()
    was_training = model.training
    model.eval()
    out = torch.zeros(len(tokenized), 2, dtype=torch.float64)
    with torch.no_grad(), context:
        for i, ex in enumerate(tokenized):
            for j, key in enumerate(("chosen_ids", "rejected_ids")):
                out[i, j] = _completion_logps(model, list(ex["prompt_ids"]), list(ex[key]), device)
    model.train(was_training)
    return out


def dpo_pair_metrics(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> dict[str, float]:
    """DPO metrics of ``(N, 2)`` policy and reference log-probs (columns: chosen, rejected).

    >>> m = dpo_pair_metrics(torch.tensor([[-1.0, -3.0], [-2.0, -2.0]]), torch.tensor([[-2.0, -2.0], [-2.0, -2.0]]), 0.1)
    >>> m["reward_accuracy"], round(m["reward_margin"], 3), m["logp_accuracy"]
    (0.75, 0.1, 0.75)
    """
    rewards = beta * (policy - reference)  # (N, 2)
    margin = rewards[:, 0] - rewards[:, 1]
    wins = (margin > 0).double() + 0.5 * (margin == 0).double()
    logp_gap = policy[:, 0] - policy[:, 1]
    logp_wins = (logp_gap > 0).double() + 0.5 * (logp_gap == 0).double()
    return {
        "n": int(policy.shape[0]),
        "reward_accuracy": float(wins.mean()),
        "reward_margin": float(margin.mean()),
        "reward_chosen": float(rewards[:, 0].mean()),
        "reward_rejected": float(rewards[:, 1].mean()),
        "logp_chosen": float(policy[:, 0].mean()),
        "logp_rejected": float(policy[:, 1].mean()),
        "logp_accuracy": float(logp_wins.mean()),
        "loss": float(torch.nn.functional.softplus(-margin).mean()),  # sigmoid DPO loss, -log sigmoid(margin)
    }


def heldout_metrics(policy_model: Any, ref_model: Any | None, tokenized: Sequence[dict[str, list[int]]],
                    beta: float, ref_logps: torch.Tensor | None = None) -> tuple[dict[str, float], torch.Tensor]:
    """DPO metrics on held-out pairs; returns them and the reference log-probs (reused after training).

    ``ref_model`` ``None`` means the policy with its adapter disabled (LoRA).
    """
    if ref_logps is None:
        ref_logps = pair_logps(ref_model if ref_model is not None else policy_model, tokenized,
                               reference=ref_model is None)
    policy = pair_logps(policy_model, tokenized)
    return dpo_pair_metrics(policy, ref_logps, beta), ref_logps


def curves_record(train: list[dict[str, Any]], before: dict[str, float] | None, after: dict[str, float] | None,
                  meta: dict[str, Any]) -> dict[str, Any]:
    """The stamped content of ``training_curves.json``."""
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "train": train,
            "heldout": {"before": before, "after": after}, "meta": meta}


def plot_curves(record: dict[str, Any], path: str | Path) -> Path:
    """Loss, reward accuracy, margin and log-probs per step, with the held-out values before/after as markers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = record.get("train") or []
    held = record.get("heldout") or {}
    fig = Figure(figsize=(12, 3.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    panels = (("loss", ("loss",)), ("reward accuracy", ("reward_accuracy",)), ("reward margin", ("reward_margin",)),
              ("log-prob", ("logp_chosen", "logp_rejected")))
    steps = [r["step"] for r in train]
    last = max(steps, default=1)
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            ys = [r.get(key) for r in train]
            if any(y is not None for y in ys):
                ax.plot(steps, ys, marker="." if len(steps) < 40 else None, label=f"train {key}")
            for when, x, marker in (("before", 0, "o"), ("after", last, "s")):
                value = (held.get(when) or {}).get(key)
                if value is not None:
                    ax.scatter([x], [value], marker=marker, color="black", zorder=3,
                               label=f"held-out {when}" if key == keys[0] else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return Path(path)
