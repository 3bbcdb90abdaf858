"""Library chatter off by default: the CLI shows its own rich progress and messages, ``--verbose`` the rest.

Called once, by the ``headatlas`` callback (never on import, so the Python API leaves the
libraries' logging alone).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

LIBRARIES = ("transformers", "datasets", "lm_eval", "trl", "accelerate", "peft", "huggingface_hub", "torch")
"""The libraries whose loggers, warnings and tqdm bars the CLI silences unless ``--verbose``."""

_QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # hub downloads and transformers' "Loading weights" bar
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # datasets' map/filter bars (TRL's dataset preparation)
    "TQDM_DISABLE": "1",  # lm-eval's and datasets' tqdm bars (the toolkit's own bars are rich)
    "TRANSFORMERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
    "LMEVAL_LOG_LEVEL": "ERROR",  # lm-eval re-reads it whenever it sets its logging up
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def quiet_libraries(verbose: bool) -> None:
    """Silence (``verbose=False``) or restore the logging, warnings and tqdm bars of :data:`LIBRARIES`."""
    level = logging.WARNING if verbose else logging.ERROR  # verbose: the libraries' own default level
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(level)
    if verbose:
        for key, value in _QUIET_ENV.items():
            if os.environ.get(key) == value:
                del os.environ[key]
        warnings.resetwarnings()
    else:
        os.environ.update(_QUIET_ENV)
        pattern = "|".join(LIBRARIES)
        warnings.filterwarnings("ignore", module=rf"({pattern})(\.|$)")
        warnings.filterwarnings("ignore", category=FutureWarning)
    # libraries imported before this call read their settings already: tell them directly
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(level)
        (hf_logging.enable_progress_bar if verbose else hf_logging.disable_progress_bar)()
    if "datasets" in sys.modules:
        import datasets

        datasets.logging.set_verbosity(level)
        (datasets.enable_progress_bars if verbose else datasets.disable_progress_bars)()
