"""RetMask (Ma & Okazaki 2026): DPO towards the model's own outputs and away from its retrieval-heads-ablated outputs.

The pipeline, in three calls (see ``docs/retmask.md``)::

    from headatlas import HeadSelection, load_model
    from headatlas.retmask import PairConfig, RetMaskTrainConfig, generate_pairs, load_prompts, train_retmask

    model, tokenizer, spec = load_model("organism")
    heads = HeadSelection(scores="runs/detect/head_scores.json").resolve(spec.n_layers, spec.n_heads)  # top 5 %
    generate_pairs(model, tokenizer, heads, load_prompts("prompts.jsonl"), PairConfig(), "pairs.jsonl")
    train_retmask("organism", "pairs.jsonl", "runs/retmask", RetMaskTrainConfig(use_lora=True))

``pairs`` needs only the core dependencies; ``train`` needs the ``train``
extra (TRL, PEFT, datasets): its names (``RetMaskTrainConfig``, a subclass of TRL's ``DPOConfig``,
``TrainResult``, ``train_retmask``) import TRL when first used.
"""

from ..lazy import exports, lazy_exports

_EXPORTS = exports({
    ".pairs": "ChatTemplateError PairConfig PairStats generate_pairs load_prompts",
    ".evaluate": "RetMaskEvalConfig evaluate_models format_table load_for_eval",
    ".train": "RetMaskTrainConfig TrainResult train_retmask",
})

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
