"""``masked-hf``: lm-eval's Hugging Face backend with attention heads masked.

A subclass of lm-eval's ``HFLM`` (the ``hf`` model) that runs every forward
pass -- loglikelihood, loglikelihood_rolling and generate_until requests --
inside :func:`retrieval_heads.masked_heads`, the way lm-eval's own
``hf_steered.py`` wraps ``_model_call`` and ``_model_generate`` in its
steering hooks. With no heads it *is* ``hf``: same requests, same numbers.

From the command line (lm-eval has no plugin entry point, so the class must
be imported before lm-eval looks the name up; this module's ``main`` does
that and then runs lm-eval's own CLI)::

    python -m retrieval_heads.evaluate.lm_eval_backend run --model masked-hf \\
        --model_args pretrained=DIR,heads=rth/head_scores.json,top_k=25,mode=zero \\
        --tasks mgsm_native_cot_de --include_path TASKS_DIR --device cpu

``model_args``:

- ``heads``: a head-score file (its ``top_k`` best heads are masked); ``random``
  (``top_k`` random heads drawn with ``random_seed`` outside the ``top_k`` of
  every file in ``exclude``, optionally ``layer_matched`` to the first of
  them); an explicit list ``"L-H;L-H"`` (write ``3-10``, not ``3.10``, which
  lm-eval would read as a float); or ``none`` (nothing masked).
- ``top_k`` (25), ``mode`` (``zero`` | ``mean`` | ``uniform``), ``means`` (a
  ``.pt``/``.safetensors`` tensor ``[n_layers, n_heads, head_dim]``, mode ``mean``),
  ``exclude`` (``PATH1;PATH2``), ``random_seed`` (0), ``layer_matched`` (false),
  plus every ``hf`` argument. ``pretrained=organism`` loads the built-in model.

From Python, around a model already loaded:

>>> from retrieval_heads import load_model, Head
>>> model, tok, _ = load_model("organism")                                     # doctest: +SKIP
>>> lm = MaskedHFLM.from_model(model, tok, heads=[Head(2, 1)], mode="zero")   # doctest: +SKIP
>>> import lm_eval; lm_eval.simple_evaluate(model=lm, tasks=["organism_mono"])  # doctest: +SKIP
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from ..heads import Head, HeadScores, check_heads, heads_to_strings
from ..masking import MASK_MODES, masked_heads
from ..model_spec import ModelSpec, resolve_model_path
from ..selection import random_heads

__all__ = ["MaskedHFLM", "load_means", "main", "resolve_heads"]


def _split_paths(value: str | Path | Sequence[str | Path] | None) -> list[Path]:
    if value is None or value == "":
        return []
    if isinstance(value, (str, Path)):
        return [Path(p.strip()) for p in str(value).split(";") if p.strip()]
    return [Path(p) for p in value]


def _parse_head_list(text: str) -> list[Head] | None:
    """``"3-10;0-2"`` -> heads, or ``None`` when ``text`` is not a head list."""
    parts = [p.strip() for p in text.replace(",", ";").split(";") if p.strip()]
    try:
        return [Head.parse(p) for p in parts] if parts else None
    except ValueError:
        return None


def resolve_heads(
    heads: str | Path | HeadScores | Iterable[Head | tuple[int, int]] | None,
    n_layers: int,
    n_heads: int,
    top_k: int = 25,
    random_seed: int = 0,
    exclude: str | Path | Sequence[str | Path] | None = None,
    layer_matched: bool = False,
) -> list[Head]:
    """Turn a ``heads`` argument into the sorted list of heads to mask; raise if it does not fit the model.

    See the module docstring for the accepted forms.

    >>> resolve_heads("random", n_layers=2, n_heads=4, top_k=3, random_seed=0)
    [Head(layer=0, head=3), Head(layer=1, head=2), Head(layer=1, head=3)]
    >>> resolve_heads("1-2;0-3", n_layers=2, n_heads=4)
    [Head(layer=0, head=3), Head(layer=1, head=2)]
    """
    if isinstance(heads, (int, float)) and not isinstance(heads, bool):
        raise ValueError(
            f"heads={heads!r} was read as a number; write a head list as 'L-H;L-H' (e.g. heads=3-10) "
            "or quote it"
        )
    if heads is None or (isinstance(heads, str) and heads.strip().lower() in ("", "none")):
        return []
    if isinstance(heads, HeadScores):
        heads.check_model(n_layers, n_heads)
        return sorted(heads.top_k(top_k))
    if isinstance(heads, (str, Path)):
        text = str(heads).strip()
        if text.lower() == "random":
            banned: set[Head] = set()
            files = _split_paths(exclude)
            matched: list[Head] | None = None
            for path in files:
                scores = HeadScores.load(path)
                scores.check_model(n_layers, n_heads)
                top = scores.top_k(top_k)
                banned.update(top)
                if layer_matched and matched is None:
                    matched = top
            if layer_matched and matched is None:
                raise ValueError("layer_matched=true needs a head-score file in exclude to match")
            return random_heads(n_layers, n_heads, top_k, random_seed, exclude=banned, layer_matched_to=matched)
        if Path(text).is_file():
            scores = HeadScores.load(text)
            scores.check_model(n_layers, n_heads, model_name=None)
            return sorted(scores.top_k(top_k))
        parsed = _parse_head_list(text)
        if parsed is None:
            raise FileNotFoundError(
                f"heads={text!r} is neither a head-score file, 'random', 'none', nor a head list like '3-10;0-2'"
            )
        return check_heads(parsed, n_layers, n_heads)
    return check_heads(heads, n_layers, n_heads)


def load_means(path: str | Path) -> torch.Tensor:
    """Per-head mean outputs ``[n_layers, n_heads, head_dim]`` for mode ``mean`` (``.pt`` or ``.safetensors``, key ``means``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))["means"]
    value = torch.load(path, map_location="cpu", weights_only=True)
    return value["means"] if isinstance(value, dict) else value


@register_model("masked-hf")
class MaskedHFLM(HFLM):
    """lm-eval's ``HFLM`` whose forwards run with ``heads`` masked (``mode`` zero, mean or uniform).

    ``heads`` accepts everything :func:`resolve_heads` does; ``self.heads`` is
    the resolved list and may be reassigned between evaluations (the
    comparison runner does so per condition). ``device`` defaults to CUDA
    when available, else CPU.

    >>> lm = MaskedHFLM(pretrained="organism", heads="runs/rh/head_scores.json", top_k=25)  # doctest: +SKIP
    >>> lm.heads[:2]                                                                          # doctest: +SKIP
    [Head(layer=2, head=1), Head(layer=3, head=0)]
    """

    def __init__(
        self,
        pretrained: Any,
        heads: Any = None,
        top_k: int = 25,
        mode: str = "zero",
        random_seed: int = 0,
        exclude: str | Sequence[str] | None = None,
        layer_matched: bool = False,
        means: str | Path | torch.Tensor | None = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        if mode not in MASK_MODES:
            raise ValueError(f"unknown mask mode {mode!r}; choose one of {MASK_MODES}")
        if isinstance(pretrained, str):
            pretrained = resolve_model_path(pretrained)
        super().__init__(pretrained=pretrained, device=device, **kwargs)
        self.spec = ModelSpec.from_model(self.model)
        self.mode = mode
        self.top_k = int(top_k)
        self.means = load_means(means) if isinstance(means, (str, Path)) else means
        if mode == "mean" and self.means is None:
            raise ValueError("mode=mean needs means=PATH (per-head mean outputs, see retrieval_heads.head_output_means)")
        self.heads = resolve_heads(
            heads, self.spec.n_layers, self.spec.n_heads, self.top_k, random_seed, exclude, layer_matched
        )

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        heads: Iterable[Head | tuple[int, int]] = (),
        mode: str = "zero",
        means: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> MaskedHFLM:
        """Wrap a loaded model and tokenizer; ``heads`` is an explicit head list.

        ``kwargs`` go to ``HFLM`` (``batch_size``, ``max_length``, ...).

        >>> lm = MaskedHFLM.from_model(model, tokenizer, heads=[Head(0, 1)])  # doctest: +SKIP
        """
        return cls(pretrained=model, tokenizer=tokenizer, heads=list(heads), mode=mode, means=means, **kwargs)

    @property
    def heads(self) -> list[Head]:
        """The heads masked in every forward (sorted, checked against the model)."""
        return self._heads

    @heads.setter
    def heads(self, value: Iterable[Head | tuple[int, int]]) -> None:
        self._heads = check_heads(value, self.spec.n_layers, self.spec.n_heads)

    def _masking(self):
        return masked_heads(self.model, self._heads, mode=self.mode, means=self.means, spec=self.spec)  # type: ignore[arg-type]

    def _model_call(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with self._masking():
            return super()._model_call(*args, **kwargs)

    def _model_generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with self._masking():
            return super()._model_generate(*args, **kwargs)

    def get_model_info(self) -> dict[str, Any]:
        """lm-eval's model info plus the masked heads and mode (lands in the results' ``config``)."""
        info = super().get_model_info()
        info.update({"masked_heads": heads_to_strings(self._heads), "mask_mode": self.mode, "top_k": self.top_k})
        return info


def main(argv: Sequence[str] | None = None) -> None:
    """Run lm-eval's CLI with ``masked-hf`` registered: ``python -m retrieval_heads.evaluate.lm_eval_backend ...``.

    The arguments are lm-eval's (``run --model masked-hf --model_args ... --tasks ...``).
    """
    from lm_eval.__main__ import cli_evaluate

    from ..decore import lm_eval_backend as _decore  # noqa: F401  (registers decore-hf)

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    # run as a script: make a later `import retrieval_heads.evaluate.lm_eval_backend` find this
    # module instead of executing it (and registering "masked-hf") a second time
    sys.modules.setdefault("retrieval_heads.evaluate.lm_eval_backend", sys.modules[__name__])
    main()
