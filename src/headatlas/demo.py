"""The whole story on the built-in model, offline: detect -> multilingual -> masked comparison -> RetMask -> report.

``headatlas demo --out runs/demo`` (``make demo``) runs every step with
sizes that fit ~15 minutes on 2 CPU cores; every step resumes, so re-running
after an interruption continues where it stopped. Output layout::

    languages/   rh-{lang}/, rth-en-de/, sharing.json, rh_vs_rth-en-de.json   (detection)
    niah/        NIAH accuracy per length x depth, unmasked vs masked            (niah-eval)
    compare/     organism tasks x conditions with bootstrap intervals            (compare)
    retmask/     preference pairs, DPO, before/after evaluation: RetMask and its random-heads control (retmask)
    atlas/       a reduced head atlas: copy, qr and mass scorers compared (compare-scorers)
    report.html  everything above on one self-contained page
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from .config import split_list

TUPLE, INTS = partial(split_list, into=tuple), partial(split_list, kind=int, into=tuple)

RETMASK_SUITES = ("multikey_long", "mono_past", "parametric")  # headroom at 1024 / past 1536 tokens; general recall
ORGANISM_TASKS = ("organism_mono", "organism_cross", "organism_multihop", "organism_parametric", "organism_multikey")


@dataclass
class DemoConfig:
    """Sizes of the demo's steps (the defaults fit ~15 minutes on 2 CPU cores)."""

    out: str = field(default="runs/demo", metadata={"help": "Output directory (re-running resumes)."})
    model: str = field(default="organism", metadata={"help": "The built-in model, or a checkpoint trained like it."})
    langs: tuple[str, ...] = field(default=("en", "de", "zh", "sw"), metadata={"parse": TUPLE, "help": "Languages of the per-language detection (the first is the source of the transition)."})
    transition: tuple[str, str] = field(default=("en", "de"), metadata={"parse": TUPLE, "help": "Source and target language of the retrieval-transition detection."})
    detect_mode: str = field(default="greedy", metadata={"help": "Detection mode: greedy or teacher."})
    lengths: tuple[int, ...] = field(default=(256, 512, 1024), metadata={"parse": INTS, "help": "Context lengths of the detection grid."})
    depths: int = field(default=5, metadata={"help": "Needle depths of the detection grid (a count, ends included)."})
    per_cell: int = field(default=2, metadata={"help": "Prompts per length x depth cell."})
    top_k: int | None = field(default=None, metadata={"help": "Heads masked per set (None: 5 % of all heads)."})
    random_seeds: int = field(default=5, metadata={"help": "Random-head controls in the comparisons."})
    compare_limit: int = field(default=30, metadata={"help": "lm-eval items per task in the comparison."})
    niah_lengths: tuple[int, ...] = field(default=(256, 512, 1024), metadata={"parse": INTS, "help": "Context lengths of the masked NIAH evaluation."})
    retmask: bool = field(default=True, metadata={"help": "Include the short RetMask run."})
    retmask_prompts: int = field(default=64, metadata={"help": "Prompts sampled for the RetMask preference pairs."})
    retmask_eval: int = field(default=40, metadata={"help": "Held-out examples per suite in the RetMask evaluation."})
    retmask_control: bool = field(default=True, metadata={"help": "Also run RetMask's random-heads control arm (same pair count and steps)."})
    seed: int = field(default=0, metadata={"help": "Seed of every step."})
    steps: tuple[str, ...] = field(default=("languages", "niah", "compare", "retmask", "atlas", "report"), metadata={"parse": TUPLE, "help": "Steps to run: languages, niah, compare, retmask, atlas, report."})

    def __post_init__(self) -> None:
        unknown = set(self.steps) - {"languages", "niah", "compare", "retmask", "atlas", "report"}
        if unknown:
            raise ValueError(f"unknown demo steps {sorted(unknown)}")
        if self.transition[0] == self.transition[1]:
            raise ValueError("the transition needs two different languages")


def run_demo(config: DemoConfig, console: Console | None = None) -> Path:
    """Run the demo; returns the path of ``report.html``."""
    from .detect import DetectConfig
    from .model_spec import load_model
    from .multilingual.study import language_study
    from .prompt_sources import PromptRequest
    from .selection import share_of_heads

    console = console or Console(stderr=True)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model, tokenizer, spec = load_model(config.model, dtype="float32", device="cpu")
    k = config.top_k or share_of_heads(spec.n_total_heads)
    src, tgt = config.transition
    langs = list(dict.fromkeys([src, tgt, *config.langs]))
    rh_path = out / "languages" / f"rh-{src}" / "head_scores.json"
    rth_path = out / "languages" / f"rth-{src}-{tgt}" / "head_scores.json"
    timings: dict[str, float] = {}

    def step(name: str) -> bool:
        if name in config.steps:
            console.rule(f"[bold]demo: {name}")
            timings[name] = time.time()
            return True
        return False

    if step("languages"):
        request = PromptRequest(lengths=list(config.lengths), depths=_depths(config.depths), per_cell=config.per_cell,
                                seed=config.seed)
        detect_config = DetectConfig(mode=config.detect_mode, batch_size=4, seed=config.seed, table_rows=10)
        language_study(model, tokenizer, config.model, spec.max_positions, langs, out / "languages", detect_config,
                       request, transitions=[(src, tgt)], top_k=k, console=console)
    heads = {"rh": str(rh_path), "rth": str(rth_path)}
    missing = [p for p in heads.values() if not Path(p).exists()]

    if step("niah") and not missing:
        from .evaluate.niah_eval import NiahEvalConfig, run_niah_eval

        run_niah_eval(
            NiahEvalConfig(model=config.model, out=str(out / "niah"), heads=heads, top_k=k, random_seeds=2,
                           lengths=",".join(map(str, config.niah_lengths)), depths=str(config.depths),
                           needle_lang=src, per_cell=config.per_cell, max_new_tokens=16),
            model=model, tokenizer=tokenizer,
        )
    if step("compare") and not missing:
        from .evaluate.compare import CompareConfig, run_compare

        run_compare(
            CompareConfig(model=config.model, tasks=list(ORGANISM_TASKS), out=str(out / "compare"), heads=heads,
                          top_k=k, random_seeds=config.random_seeds, limit=config.compare_limit),
            model=model, tokenizer=tokenizer,
        )
    if config.retmask and step("retmask") and not missing:
        from .retmask.pipeline import RetMaskPipelineConfig, run_retmask_pipeline

        run_retmask_pipeline(
            RetMaskPipelineConfig(model=config.model, heads=str(rh_path), out=str(out / "retmask"), top_k=k,
                                  n_prompts=config.retmask_prompts, n_eval=config.retmask_eval, seed=config.seed,
                                  random_control=config.retmask_control, eval_suites=RETMASK_SUITES,
                                  lengths=(256, 512), control_prompt_factor=2),  # two arms in the old time budget
            console=console,
        )
    if step("atlas"):
        from .atlas import AtlasConfig, run_atlas

        run_atlas(AtlasConfig(model=config.model, out=str(out / "atlas"), scorers="copy,qr,mass", random_seeds=2,
                              lengths="256,512", depths="3", per_cell=1, niah_lengths="256,512", niah_depths="3",
                              tasks="", kv_budget=2, kv_lengths="1024", kv_depths="2", seed=config.seed),
                  model=model, tokenizer=tokenizer, console=console)
    if missing:
        console.print(f"[bold red]detection produced no head scores ({missing}); later steps skipped[/]")
    report = out / "report.html"
    if step("report"):
        from .report import write_report

        runs = [p for p in (out / "languages", out / "niah", out / "compare", out / "retmask", out / "atlas")
                if p.exists()]
        report = write_report(runs, out / "report.html", heads_listed=k, title=f"headatlas demo — {config.model}")
    _summary(console, timings, started, report)
    return report


def _depths(n: int) -> list[float]:
    return [i / (n - 1) for i in range(n)] if n > 1 else [0.5]


def _summary(console: Console, timings: dict[str, float], started: float, report: Path) -> None:
    names = list(timings)
    ends = [timings[n] for n in names[1:]] + [time.time()]
    for name, begin, end in zip(names, [timings[n] for n in names], ends, strict=True):
        console.print(f"  {name:<10} {end - begin:7.1f} s")
    console.print(f"demo finished in {time.time() - started:.0f} s")
    console.print(f"[bold green]report: {report.resolve()}[/]")


QUICK = {"lengths": (256, 512), "depths": 3, "per_cell": 1, "random_seeds": 2, "compare_limit": 10,
         "niah_lengths": (256, 512), "retmask_prompts": 16, "retmask_eval": 10, "langs": ("en", "de")}
"""What ``--quick`` changes: smaller grids and fewer items (a ~3-minute smoke run)."""


def config_from_overrides(base: DemoConfig | None = None, **overrides: Any) -> DemoConfig:
    """``base`` (default: :class:`DemoConfig`) with the given fields replaced (None values keep them)."""
    return dataclasses.replace(base or DemoConfig(), **{k: v for k, v in overrides.items() if v is not None})
