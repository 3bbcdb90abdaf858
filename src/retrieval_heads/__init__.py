"""retrieval-heads: find, mask and use the retrieval heads of Hugging Face causal LMs."""

__version__ = "0.1.0"
