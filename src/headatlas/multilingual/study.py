"""Per-language retrieval heads, their sharing, and retrieval-transition heads, in one resumable run.

Layout of ``out_dir``::

    rh-{lang}/            a detection run per language (head_scores.json, samples.jsonl, ...)
    rth-{src}-{tgt}/      a transition run per language pair
    sharing.json          overlaps of the per-language top-K sets (sharing_analysis)
    rh_vs_rth-{src}-{tgt}.json   RH vs RTH (compare_head_sets)
    sharing.png, rh_vs_rth-{src}-{tgt}.png, summary.md

The folder is a run (:func:`headatlas.runs.open_run`, ``run.json``): a
rerun with another grid or detection settings is refused by name before any
language starts; every detection run inside it resumes on its own, so
re-running the same command skips finished prompts and finished languages
(a new language or pair is added).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from ..detect import DetectConfig, NoRetrievalError, detect
from ..detect.plots import new_figure, save_figure
from ..heads import HeadScores
from ..prompt_sources import PromptRequest, build_prompts
from ..runs import atomic_write_text, flags, open_run
from .sharing import check_top_k, compare_head_sets, sharing_analysis


def language_study(
    model: Any,
    tokenizer: Any,
    model_name: str,
    max_positions: int | None,
    langs: Sequence[str],
    out_dir: str | Path,
    config: DetectConfig,
    request: PromptRequest,
    transitions: Sequence[tuple[str, str]] = (),
    top_k: int = 20,
    console: Console | None = None,
) -> dict[str, Any]:
    """Detect retrieval heads per language and retrieval-transition heads per pair; analyse their overlap.

    ``request`` gives the grid (lengths, depths, haystack, needles); its
    language fields are set per run. A language where no prompt passes the
    retrieval filter is reported (``failed``) and left out of the sharing
    analysis instead of stopping the study.
    """
    from ..model_spec import ModelSpec

    check_top_k(top_k, ModelSpec.from_model(model).n_total_heads)  # before any detection runs
    console = console or Console(stderr=True)
    out = Path(out_dir)
    grid = {k: v for k, v in dataclasses.asdict(request).items() if k not in ("kind", "lang", "source_lang", "target_lang")}
    settings = {"--model": model_name, **flags(config.fingerprint(), [k for k in config.fingerprint() if k != "kind"]),
                **flags(grid)}
    run = open_run(out, "language-study", settings, discard=(), model=model_name, seed=config.seed,
                   langs=list(langs), transitions=[f"{s}-{t}" for s, t in transitions], top_k=top_k,
                   detect=dataclasses.asdict(config))
    rh: dict[str, HeadScores] = {}
    rth: dict[str, HeadScores] = {}
    failed: dict[str, str] = {}

    def detect_into(found: dict[str, HeadScores], key: str, kind: str, **languages: str) -> None:
        """One detection run into ``found[key]``; a run where no prompt passed the filter goes to ``failed``."""
        name, heads = ("rh", "retrieval") if kind == "retrieval" else ("rth", "retrieval-transition")
        console.rule(f"{heads} heads: {' -> '.join(languages.values())}")
        prompts = build_prompts(model_name, tokenizer, max_positions, dataclasses.replace(request, kind=kind, **languages))
        try:
            found[key] = detect(model, tokenizer, prompts, dataclasses.replace(config, kind=kind), out / f"{name}-{key}",
                                console=console)
        except NoRetrievalError as err:
            failed[f"{name}-{key}"] = str(err).splitlines()[0]

    for lang in langs:
        detect_into(rh, lang, "retrieval", lang=lang)
    for src, tgt in transitions:
        detect_into(rth, f"{src}-{tgt}", "transition", source_lang=src, target_lang=tgt)

    result: dict[str, Any] = {"failed": failed}
    if len(rh) >= 2:
        sharing = sharing_analysis(rh, top_k=top_k)
        run.write_json("sharing.json", sharing, kind="sharing")
        plot_matrix(sharing["jaccard_matrix"], sharing["languages"], out / "sharing.png",
                    f"Jaccard of top-{top_k} retrieval heads")
        result["sharing"] = sharing
    comparisons = {}
    for pair, scores in rth.items():
        src = pair.split("-")[0]
        if src not in rh:
            continue
        comp = compare_head_sets(rh[src], scores, top_k=top_k)
        run.write_json(f"rh_vs_rth-{pair}.json", {**comp, "pair": pair}, kind="rh-vs-rth")
        plot_side_by_side(rh[src], scores, out / f"rh_vs_rth-{pair}.png", f"RH ({src}) vs RTH ({pair})")
        comparisons[pair] = comp
    result["rh_vs_rth"] = comparisons
    run.write_json("study.json", result)
    result["meta"] = run.meta
    atomic_write_text(out / "summary.md", summary_markdown(rh, rth, result, top_k))
    return result


def summary_markdown(
    rh: dict[str, HeadScores], rth: dict[str, HeadScores], result: dict[str, Any], top_k: int
) -> str:
    """A short Markdown account of the study."""
    lines = ["# Multilingual retrieval heads", ""]
    lines += ["| run | heads > 0.1 | of | counted prompts | top-5 |", "|---|---|---|---|---|"]
    for name, scores in [*(("rh-" + k, v) for k, v in rh.items()), *(("rth-" + k, v) for k, v in rth.items())]:
        top5 = ", ".join(f"{h} ({scores[h]:.2f})" for h in scores.top_k(5))
        lines.append(
            f"| {name} | {len(scores.above(0.1))} | {scores.n_layers * scores.n_heads} | "
            f"{scores.meta.get('counted_prompts')}/{scores.meta.get('n_prompts')} | {top5} |"
        )
    if "sharing" in result:
        s = result["sharing"]
        lines += ["", f"## Sharing of the top-{top_k} sets", ""]
        lines += [f"- {pair}: Jaccard {v['jaccard']:.2f}, {v['intersection']} shared" for pair, v in s["pairs"].items()]
        lines.append(
            f"- retrieval heads (> 0.1) common to all languages: {s['shared_by_all']['count']} "
            f"({s['shared_by_all']['share_of_union']:.0%} of their union)"
        )
        agn = s["strong"]["share_language_agnostic"]
        lines.append(
            f"- strong heads (>= 0.5): {len(s['strong']['heads'])}; language-agnostic: "
            f"{len(s['strong']['language_agnostic'])}" + (f" ({agn:.0%})" if agn is not None else "")
        )
    for pair, comp in result.get("rh_vs_rth", {}).items():
        lines += ["", f"## RH vs RTH ({pair})", ""]
        lines.append(f"- top-{comp['top_k']} overlap: {comp['overlap']['intersection']} heads "
                     f"(Jaccard {comp['overlap']['jaccard']:.2f})")
        lines.append(f"- mean layer: RH {comp['rh_mean_layer']:.2f}, RTH {comp['rth_mean_layer']:.2f}")
        lines.append(f"- heads > 0.1: RH {comp['rh_above_0.1']}, RTH {comp['rth_above_0.1']} "
                     f"of {comp['n_heads_total']}")
    for name, why in result.get("failed", {}).items():
        lines.append(f"- **{name} failed**: {why}")
    return "\n".join(lines) + "\n"


def plot_matrix(matrix: list[list[float]], labels: list[str], path: Path, title: str) -> Path:
    """A labelled square matrix (e.g. Jaccard between languages) as a PNG."""
    fig = new_figure(1.2 + 0.7 * len(labels), 1 + 0.6 * len(labels))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="w" if value < 0.6 else "k", fontsize=8)
    fig.colorbar(image, ax=ax)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path, dpi=110)


def plot_side_by_side(rh: HeadScores, rth: HeadScores, path: Path, title: str) -> Path:
    """RH and RTH heatmaps next to each other, plus their per-layer share of the total score."""
    fig = new_figure(12, 3.5)
    axes = fig.subplots(1, 3)
    for ax, scores, name in ((axes[0], rh, "retrieval"), (axes[1], rth, "retrieval-transition")):
        image = ax.imshow(scores.scores.numpy(), aspect="auto", origin="lower", cmap="viridis")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(image, ax=ax)
    for scores, name in ((rh, "RH"), (rth, "RTH")):
        per_layer = scores.scores.clamp(min=0).sum(dim=1)
        axes[2].plot(range(scores.n_layers), (per_layer / per_layer.sum().clamp(min=1e-9)).numpy(), marker="o", label=name)
    axes[2].set_xlabel("layer")
    axes[2].set_ylabel("share of total score")
    axes[2].legend()
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=110)
