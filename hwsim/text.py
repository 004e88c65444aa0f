"""Quoting values in messages: a hostile value (a 300 KB list given as a seed) is shown as an excerpt."""
from __future__ import annotations

EXCERPT = 120          # characters of a value an error message quotes


def excerpt(value, limit: int = EXCERPT) -> str:
    """repr(value) (escaped: one line), at most ``limit`` characters of it and how long it was."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
