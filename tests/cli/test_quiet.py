"""Library chatter is off by default and back with ``--verbose`` (one switch: commands.quiet)."""

from __future__ import annotations

import logging
import os
import warnings

import pytest

from headatlas.commands.quiet import LIBRARIES, quiet_libraries


@pytest.fixture(autouse=True)
def _restore(monkeypatch):
    """Leave the test process as it was: environment, logger levels and warning filters."""
    for key in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TQDM_DISABLE", "TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY",
                "LMEVAL_LOG_LEVEL", "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
        monkeypatch.delenv(key, raising=False)
    levels = {name: logging.getLogger(name).level for name in LIBRARIES}
    with warnings.catch_warnings():
        yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    hf_logging.enable_progress_bar()


def test_quiet_by_default_and_verbose_restores():
    from transformers.utils import logging as hf_logging

    quiet_libraries(verbose=False)
    assert all(logging.getLogger(name).getEffectiveLevel() == logging.ERROR for name in LIBRARIES)
    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["LMEVAL_LOG_LEVEL"] == "ERROR"
    assert not hf_logging.is_progress_bar_enabled()
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn_explicit("a library's FutureWarning", FutureWarning, "trl/trainer.py", 1, module="trl.trainer")
    assert seen == []

    quiet_libraries(verbose=True)
    assert all(logging.getLogger(name).getEffectiveLevel() == logging.WARNING for name in LIBRARIES)
    assert "TQDM_DISABLE" not in os.environ and hf_logging.is_progress_bar_enabled()


def test_the_cli_has_a_global_verbose_flag():
    from typer.testing import CliRunner

    from headatlas.cli import app

    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0 and "--verbose" in result.output
