"""The tiny checkpoint of the lm-eval backend tests, reused."""

from tests.evaluate.conftest import head_files, local_tasks, organism_standin, tiny_dir, tiny_model  # noqa: F401
