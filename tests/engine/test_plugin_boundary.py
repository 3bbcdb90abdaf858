"""The built-in model is a plug-in by imports and by knowledge: outside its package, the builtins registry and
the command layer, no module imports it or selects it by name in code (docstrings and help texts may name it)."""

from __future__ import annotations

import ast
from pathlib import Path

import headatlas
from headatlas.builtins import builtin_models

SRC = Path(headatlas.__file__).parent
ALLOWED = ("organism/", "builtins.py", "commands/", "cli.py", "demo.py")  # the demo runs the built-in model


def _code_modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if not rel.startswith(ALLOWED):
            yield rel, ast.parse(path.read_text(encoding="utf-8"))


def test_no_core_module_imports_the_built_in_model():
    offenders = []
    for rel, tree in _code_modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and "organism" in (node.module or ""):
                offenders.append(f"{rel}:{node.lineno}")
            if isinstance(node, ast.Import) and any("organism" in a.name for a in node.names):
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


def test_no_core_module_selects_a_built_in_model_by_name():
    names = set(builtin_models())
    assert names, "no built-in model registered"
    offenders = []
    for rel, tree in _code_modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.strip() in names:
                offenders.append(f"{rel}:{node.lineno} {node.value!r}")
    assert offenders == []


def test_the_registry_entry_declares_tasks_prompts_and_the_conflict_task():
    for model in builtin_models().values():
        assert model.prompts and model.tasks and model.conflict, model.name


def test_runs_imports_no_other_headatlas_module_at_import_time():
    tree = ast.parse((SRC / "runs.py").read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert top == [], [n.module for n in top]
