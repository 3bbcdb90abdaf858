"""Multilingual retrieval heads and retrieval-transition heads (Patel et al., 2026)."""
