"""Recipes: a directory of stage files (``stage1.json``, ``stage2.json``, ...), trained in order by
:func:`retrieval_heads.organism.train.train_recipe`, each stage continuing from the previous one's
output; the shipped one trained the built-in model. This module only reads recipes and records
their times (it imports nothing of the trainer)."""

from __future__ import annotations

from pathlib import Path

RECIPES = Path(__file__).parent / "recipes"


def recipe_stages(recipe_dir: str | Path = RECIPES) -> list[Path]:
    """The stage files of a recipe (``stage1.json``, ``stage2.json``, ...), in order."""
    stages = sorted(Path(recipe_dir).glob("stage*.json"), key=lambda p: int(p.stem.removeprefix("stage")))
    if not stages:
        raise FileNotFoundError(f"no stage*.json in {recipe_dir}")
    return stages


def stage_time(recipe_file: str, steps: int, record: dict, **extra: str) -> dict:
    """One stage's entry in a recipe's ``stages`` list: its stage file, steps and times (from its ``training.json``)."""
    return {"recipe": recipe_file, **extra, "steps": steps, "wall_time_s": record["wall_time_s"],
            "cpu_time_s": record["cpu_time_s"]}


def with_recipe_record(record: dict, times: list[dict], source: str) -> dict:
    """The last stage's ``training.json`` record with ``stages`` (every stage's times) and ``recipe``
    (where the stage files came from, total wall time): what the shipped checkpoint's holds."""
    total = round(sum(t["wall_time_s"] for t in times), 1)
    return {**record, "stages": times, "recipe": {"source": source, "total_wall_time_s": total}}
