"""Every name a module exports (its ``__all__`` and its lazy export table) imports."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import headatlas

MODULES = ["headatlas", *(info.name for info in pkgutil.walk_packages(headatlas.__path__, "headatlas."))]


@pytest.mark.parametrize("name", MODULES)
def test_every_exported_name_resolves(name):
    module = importlib.import_module(name)
    exported = set(getattr(module, "__all__", ())) | set(getattr(module, "_EXPORTS", {}))
    missing = [n for n in sorted(exported) if not hasattr(module, n)]
    assert missing == [], f"{name} exports names that do not import: {missing}"


def test_the_lazy_evaluate_export_of_bootstrap_ci():
    from headatlas.evaluate import bootstrap_ci  # pointed at a module that moved (issue 27)
    from headatlas.stats import bootstrap_ci as moved

    assert bootstrap_ci is moved
