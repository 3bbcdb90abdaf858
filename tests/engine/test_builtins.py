"""The built-in model registry: entry points, the fallback, and a core that never imports the organism."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from headatlas import builtins

SRC = Path(builtins.__file__).resolve().parent
CORE = ("model_spec.py", "attention.py", "capture.py", "masking.py", "heads.py", "selection.py", "generation.py",
        "builtins.py", "prompt_sources.py", "lexicon.py", "niah", "detect", "evaluate", "retmask", "multilingual")


@pytest.fixture
def fresh_registry(monkeypatch):
    monkeypatch.setattr(builtins, "_REGISTRY", {})
    monkeypatch.setattr(builtins, "_loaded", False)


def test_the_fallback_registers_the_organism_when_no_entry_point_is_installed(fresh_registry, monkeypatch):
    monkeypatch.setattr(builtins.metadata, "entry_points", lambda group: [])
    organism = builtins.get_builtin("organism")
    from headatlas.organism import ORGANISM_PATH

    assert organism.checkpoint() == ORGANISM_PATH
    assert builtins.builtin_for(ORGANISM_PATH) is organism  # the marker file (lexicon.jsonl) is there
    assert builtins.builtin_for("gpt2") is None


def test_entry_points_replace_the_fallback(fresh_registry, monkeypatch, tmp_path):
    toy = builtins.BuiltinModel("toy", checkpoint=lambda: tmp_path, prompts=None, tasks=None)
    point = SimpleNamespace(load=lambda: (lambda: [toy]))
    monkeypatch.setattr(builtins.metadata, "entry_points", lambda group: [point] if group == builtins.ENTRY_POINT_GROUP else [])
    assert set(builtins.builtin_models()) == {"toy"}
    with pytest.raises(ValueError, match="no task suite"):
        builtins.task_suite("toy")


def test_load_model_resolves_names_through_the_registry(fresh_registry, monkeypatch, tmp_path):
    from headatlas.model_spec import resolve_model_path

    builtins.register(builtins.BuiltinModel("toy", checkpoint=lambda: tmp_path, prompts=None, tasks=None))
    with pytest.raises(FileNotFoundError, match="toy checkpoint is not shipped"):
        resolve_model_path("toy")
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_path("toy") == str(tmp_path)
    assert resolve_model_path("some/hub-id") == "some/hub-id"


def test_pyproject_declares_the_fallback_plugins_as_entry_points():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["project"]
    declared = project["entry-points"][builtins.ENTRY_POINT_GROUP]
    assert sorted(declared.values()) == sorted(builtins.FALLBACK_PLUGINS)
    from headatlas.organism import plugin, train

    assert plugin.LEXICON_FILE == train.LEXICON_FILE


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_the_core_imports_nothing_from_the_organism():
    files = [p for name in CORE for p in ([SRC / name] if name.endswith(".py") else (SRC / name).rglob("*.py"))]
    offenders = {str(p.relative_to(SRC)): sorted(i for i in _imports(p) if "organism" in i) for p in files}
    assert not {k: v for k, v in offenders.items() if v}
    code = ("import sys, headatlas.model_spec, headatlas.detect, headatlas.niah, "
            "headatlas.generation, headatlas.prompt_sources, headatlas.retmask.pairs; "
            "print(any(m.startswith('headatlas.organism') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=SRC.parents[1])
    assert out.stdout.strip() == "False"


def test_artifacts_name_the_builtin_model_not_its_install_path(tmp_path):
    """model_identity (every detect/pairs/kv/decore artifact) records ``organism``; another copy keeps its path."""
    import shutil

    from headatlas import load_model
    from headatlas.model_spec import model_identity, resolve_model_path

    model, _, _ = load_model("organism", dtype="float32", device="cpu")
    assert model_identity(model)["model"] == "organism"
    copy = tmp_path / "copy"
    shutil.copytree(resolve_model_path("organism"), copy)
    assert builtins.builtin_name(str(copy)) == str(copy)
    assert builtins.builtin_name("meta-llama/Llama-3.1-8B") == "meta-llama/Llama-3.1-8B"
