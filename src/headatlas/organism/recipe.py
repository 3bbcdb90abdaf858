"""Recipes: a directory of stage files (``stage1.json``, ``stage2.json``, ...), trained in order,
each stage continuing from the previous one's output; the shipped one trained the built-in model.
It builds on :mod:`.train` (never the other way round)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..runs import atomic_write_json
from .train import TRAINING_FILE, train_organism
from .train_config import OrganismTrainConfig

RECIPES = Path(__file__).parent / "recipes"


def recipe_stages(recipe_dir: str | Path = RECIPES) -> list[Path]:
    """The stage files of a recipe (``stage1.json``, ``stage2.json``, ...), in order."""
    stages = sorted(Path(recipe_dir).glob("stage*.json"), key=lambda p: int(p.stem.removeprefix("stage")))
    if not stages:
        raise FileNotFoundError(f"no stage*.json in {recipe_dir}")
    return stages


def train_recipe(out: str | Path, recipe_dir: str | Path = RECIPES, threads: int | None = None) -> Path:
    """Train every stage of a recipe in order, each continuing from the previous one, and return ``out``.

    The default recipe is the one that trained the shipped checkpoint (``recipes/``). Stage *i*
    writes ``OUT-stages/stageI`` and starts from stage *i-1*'s output; the last writes ``out``.
    Each stage is a run of :func:`~.train.train_organism`, so a finished stage is kept, an interrupted
    one resumes and a folder holding a stage with other settings is refused. The final ``training.json``
    gains ``stages`` (every stage's steps and times) and ``recipe`` (where it came from, total time).
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
        print(f"stage {i}/{len(stages)} ({stage_file.name})", file=sys.stderr, flush=True)
        train_organism(cfg)
        record = json.loads((Path(cfg.out_dir) / TRAINING_FILE).read_text())
        times.append(stage_time(stage_file.name, cfg.steps, record))
        previous = cfg.out_dir
    atomic_write_json(out / TRAINING_FILE, with_recipe_record(record, times, str(recipe_dir)))
    return out


def stage_time(recipe_file: str, steps: int, record: dict, **extra: str) -> dict:
    """One stage's entry in a recipe's ``stages`` list: its stage file, steps and times (from its ``training.json``)."""
    return {"recipe": recipe_file, **extra, "steps": steps, "wall_time_s": record["wall_time_s"],
            "cpu_time_s": record["cpu_time_s"]}


def with_recipe_record(record: dict, times: list[dict], source: str) -> dict:
    """The last stage's ``training.json`` record with ``stages`` (every stage's times) and ``recipe``
    (where the stage files came from, total wall time): what the shipped checkpoint's holds."""
    total = round(sum(t["wall_time_s"] for t in times), 1)
    return {**record, "stages": times, "recipe": {"source": source, "total_wall_time_s": total}}
