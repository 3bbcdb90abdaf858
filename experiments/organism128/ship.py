"""Install a finished pipeline run as the shipped organism: its stage files, its checkpoint, its training record.

    python experiments/organism128/ship.py RUN_DIR --package-dir src/headatlas/organism [--stages 13]

RUN_DIR holds ``recipe/stageI.json`` and ``stageI/`` (each with its ``training.json``) for the stages the
run trained, up to I = N, as ``pipeline.sh`` leaves them (a stage with no stage file was skipped). Each
stage file is checked against the settings its stage recorded (so the shipped recipe is what trained the
checkpoint) and against the chain (it starts from the previous trained stage), its paths renamed to the
shipped recipe's, numbered consecutively, and written to ``recipes/``; stage N's checkpoint goes to
``checkpoint/`` with a ``training.json`` that lists every stage's steps and times, as
``organism.recipe.train_recipe`` writes it.
Nothing is written unless every check passes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from headatlas.organism.recipe import stage_time, with_recipe_record
from headatlas.organism.train_config import OrganismTrainConfig, training_settings
from headatlas.runs import atomic_write_json

CHECKPOINT_FILES = ("config.json", "generation_config.json", "lexicon.jsonl", "model.safetensors",
                    "tokenizer.json", "tokenizer_config.json")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--package-dir", type=Path, required=True, help="the organism package to install into")
    ap.add_argument("--stages", type=int, default=13)
    args = ap.parse_args()
    run, n = args.run_dir, args.stages

    stage_files, times, previous = {}, [], ""
    trained = [i for i in range(1, n + 1) if (run / "recipe" / f"stage{i}.json").is_file()]
    for j, i in enumerate(trained, start=1):
        stage = json.loads((run / "recipe" / f"stage{i}.json").read_text())
        record = json.loads((run / f"stage{i}" / "training.json").read_text())
        if Path(stage.get("init_from") or "") != Path(previous):
            sys.exit(f"stage {i} starts from {stage.get('init_from')!r}, not from the stage before it ({previous!r})")
        previous = str(run / f"stage{i}")
        wanted = training_settings(json.loads(json.dumps(asdict(OrganismTrainConfig(**stage)))))
        recorded = training_settings(record["config"])
        if wanted != recorded:
            diff = {k for k in wanted | recorded if wanted.get(k) != recorded.get(k)}
            sys.exit(f"stage {i}: the stage file and what trained {run}/stage{i} differ in {sorted(diff)}")
        stage["out_dir"] = "runs/organism" if i == trained[-1] else f"runs/organism-stage{j}"
        stage["init_from"] = f"runs/organism-stage{j - 1}" if j > 1 else ""
        stage_files[f"stage{j}.json"] = stage
        times.append(stage_time(f"stage{j}.json", stage["steps"], record, run_stage=f"stage{i}"))
    final = run / f"stage{n}"
    missing = [f for f in CHECKPOINT_FILES if not (final / f).is_file()]
    if missing:
        sys.exit(f"{final} lacks {missing}")

    recipes, checkpoint = args.package_dir / "recipes", args.package_dir / "checkpoint"
    for old in recipes.glob("stage*.json"):
        old.unlink()
    for name, stage in stage_files.items():
        atomic_write_json(recipes / name, stage)
    for f in CHECKPOINT_FILES:
        shutil.copyfile(final / f, checkpoint / f)
    record = with_recipe_record(json.loads((final / "training.json").read_text()), times,
                                "src/headatlas/organism/recipes")
    atomic_write_json(checkpoint / "training.json", record)
    print(f"shipped {final}: {len(trained)} stages, {record['recipe']['total_wall_time_s'] / 3600:.2f} h of wall time")


if __name__ == "__main__":
    main()
