"""What headatlas does on a given model, layer by layer and command by command (``headatlas info``).

It reads the model's :class:`~headatlas.model_spec.ModelSpec` and asks the one owner of each rule (the KV
cache's :func:`~headatlas.kvcache.plan.compressible_layers`) rather than restating it.
"""

from __future__ import annotations

from typing import Any

from .kvcache.plan import compressible_layers
from .model_spec import ModelSpec, UnsupportedModelError


def layer_rows(spec: ModelSpec) -> list[dict[str, Any]]:
    """One row per layer for ``headatlas info``: index, kind, window, softmax heads, recurrent state."""
    return [{"layer": i, "kind": kind, "window": spec.windows[i],
             "softmax heads": spec.n_heads if kind != "linear" else 0, "recurrent state": spec.recurrent[i]}
            for i, kind in enumerate(spec.layer_kinds)]


def command_support(spec: ModelSpec) -> dict[str, str]:
    """What each command does on this model, in words (``headatlas info``): ``yes ...`` or ``refused: reason``."""
    softmax, linear = spec.softmax_layers, [i for i, k in enumerate(spec.layer_kinds) if k == "linear"]
    heads = f"{spec.n_total_heads} softmax heads in layers {_ranges(softmax)}"
    skipped = f"; layers {_ranges(linear)} have no softmax heads (not scored, never selected)" if linear else ""
    sinks = "; masses include the attention sinks" if spec.sinks else ""
    out = {
        "detect / capture": f"yes: {heads}{skipped}{sinks}",
        "mask (niah-eval, compare, retmask, decore)": f"yes: zero/mean/uniform on the {spec.head_dim}-wide "
                                                      f"output slice of each of the {heads}",
    }
    try:
        full = compressible_layers(spec)
    except UnsupportedModelError as err:
        out["kv-compress"] = "refused: " + str(err).removeprefix("kv-compress: ")
    else:
        kept = [i for i in softmax if i not in full]
        out["kv-compress"] = f"yes: compresses the full-length layers {_ranges(full)}" + (
            f"; sliding/chunked layers {_ranges(kept)} are kept whole" if kept else "") + (
            f"; layers {_ranges(linear)} keep their recurrent state" if linear else "")
    return out


def _ranges(layers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    parts: list[str] = []
    for i in layers:
        if parts and i == int(parts[-1].split("-")[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{i}"
        else:
            parts.append(str(i))
    return ", ".join(parts) or "none"
