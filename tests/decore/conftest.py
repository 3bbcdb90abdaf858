"""The tiny checkpoint of the lm-eval backend tests, reused."""

from tests.evaluate.conftest import tiny_dir, tiny_model  # noqa: F401
