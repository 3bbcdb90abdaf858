"""DeCoRe contrastive decoding against the same model with its retrieval heads masked (see docs/decore.md).

The core (:mod:`.decoding`) is model-agnostic; the knowledge-conflict task of
the built-in model lives in :mod:`headatlas.organism.conflict` and is
reached through the command layer (``headatlas decore --task conflict``).
"""

from ..lazy import exports, lazy_exports

_EXPORTS = exports({
    ".decoding": "DecoreOutput DecoreSettings contrast decore_generate",
})

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
