"""Sweep every causal-LM model type the installed transformers ships through the engine (issue 26).

For each model type in ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` the script builds a tiny random model from the
type's default config shrunk by common size fields (4 layers, hidden 64, 4 heads, 300 ids; a type whose
config ignores them and stays over 5M parameters is skipped, counted on the meta device first), then checks
that :class:`~headatlas.ModelSpec` reads it, that capture leaves the logits bit-equal, that the captured
top-1 key equals the argmax of eager ``output_attentions=True`` weights at every softmax layer (random
attention, not sharpened: near-ties can flip an argmax), and that a ``zero`` mask changes the logits.
It prints one line per type and writes ``OUT.json``.

    nice python experiments/families_sweep.py /tmp/sweep          # all types, ~3 min on one core
    nice python experiments/families_sweep.py /tmp/sweep qwen3_5 jamba

The curated per-family matrix with end-to-end commands is ``tests/families`` (docs/models.md).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import warnings
from typing import Any

import torch

TINY = dict(vocab_size=300, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=96, head_dim=16, max_position_embeddings=512, n_embd=64, n_layer=4, n_head=4,
            num_layers=4, num_heads=4, d_model=64, ffn_hidden_size=96, n_positions=512, moe_intermediate_size=32,
            num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, decoder_layers=4,
            encoder_layers=4, decoder_attention_heads=4, encoder_attention_heads=4, decoder_ffn_dim=96,
            encoder_ffn_dim=96)


class _Timeout(Exception):
    pass


def _tiny_config(model_type: str) -> Any:
    import transformers

    cfg = transformers.CONFIG_MAPPING[model_type]()
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for key, value in TINY.items():
        if hasattr(text, key) and not isinstance(getattr(text, key), (list, dict)):
            with contextlib.suppress(Exception):  # a frozen or validated field: keep the default
                setattr(text, key, value)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(getattr(text, key, None), int) and getattr(text, key) >= TINY["vocab_size"]:
            setattr(text, key, 0)
    if isinstance(getattr(text, "layer_types", None), list) and len(text.layer_types) != 4:
        text.layer_types = (text.layer_types * 4)[:4] or None
    return cfg


def check(model_type: str) -> str:
    """One line: what the engine does on a tiny ``model_type`` model."""
    from transformers import AutoModelForCausalLM

    from headatlas import ModelSpec

    try:
        cfg = _tiny_config(model_type)
        with torch.device("meta"):
            n = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
        if n > 5e6:
            return f"skip: no tiny config ({n / 1e6:.0f}M parameters)"
        torch.manual_seed(0)
        try:
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa").eval()
        except ValueError:
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager").eval()
    except _Timeout:
        raise
    except Exception as err:  # noqa: BLE001 - the generic tiny config does not build: not the engine's doing
        return f"build: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
    try:
        spec = ModelSpec.from_model(model)
    except Exception as err:  # noqa: BLE001
        return f"SPEC: {err}"
    ids = torch.randint(3, 250, (1, 10), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            reference = model(ids).logits
    except Exception as err:  # noqa: BLE001 - the model's own forward fails on the generic tiny config
        return f"forward: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
    try:
        return _engine_checks(model, spec, ids, reference)
    except _Timeout:
        raise
    except Exception as err:  # noqa: BLE001 - the engine failed where the model itself runs
        return f"ENGINE: {type(err).__name__}: {err}"


def _engine_checks(model: Any, spec: Any, ids: torch.Tensor, reference: torch.Tensor) -> str:
    from headatlas import capture_attention, masked_heads
    from headatlas.heads import Head

    with torch.no_grad():
        with capture_attention(model, spec=spec) as rec:
            captured = model(ids).logits
        base = model.config._attn_implementation
        model.set_attn_implementation("eager")
        attentions = [a for a in model(ids, output_attentions=True).attentions or () if a is not None]
        model.set_attn_implementation(base)
        top1 = rec.stacked().indices[0, :, 0, :, 0, 0]
        agree: Any = "n/a"
        if len(attentions) == len(spec.softmax_layers):
            agree = all(torch.equal(top1[layer], a[0, :, -1].argmax(-1))
                        for layer, a in zip(spec.softmax_layers, attentions, strict=True))
        with masked_heads(model, [Head(spec.softmax_layers[-1], 0)], spec=spec):
            masked = model(ids).logits
    kinds = ",".join(spec.layer_kinds)
    return (f"ok kinds={kinds} logits_unchanged={torch.equal(reference, captured)} "
            f"top1_equals_eager={agree} mask_acts={not torch.equal(masked, reference)}")


def main() -> None:
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    from transformers.utils import logging

    warnings.filterwarnings("ignore")
    logging.set_verbosity_error()
    torch.set_num_threads(1)
    out, types = sys.argv[1], sys.argv[2:] or sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)

    def on_alarm(*_: Any) -> None:
        raise _Timeout

    signal.signal(signal.SIGALRM, on_alarm)
    results: dict[str, str] = {}
    for model_type in types:
        signal.alarm(60)
        try:
            results[model_type] = check(model_type)
        except _Timeout:
            results[model_type] = "timeout (60 s)"
        finally:
            signal.alarm(0)
        print(f"{model_type}: {results[model_type]}", flush=True)
    ok = [t for t, r in results.items() if r.startswith("ok")]
    summary = {"transformers": transformers.__version__, "types": len(results), "checked": len(ok),
               "spec_refused": [t for t, r in results.items() if r.startswith("SPEC")],
               "engine_failed": [t for t, r in results.items() if r.startswith("ENGINE")],
               "top1_differs": [t for t in ok if "top1_equals_eager=False" in results[t]], "results": results}
    with open(f"{out}.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    print({k: v for k, v in summary.items() if k != "results"})


if __name__ == "__main__":
    main()
