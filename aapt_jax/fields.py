"""Messages for config fields that do not exist: name the nearest field that does."""

from __future__ import annotations

import difflib


def nearest(name: str, known) -> str | None:
    match = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return match[0] if match else None


def suggestions(unknown, known) -> str:
    """`` (did you mean 'window'?)`` for the unknown names that have a close known one, else ''."""
    hints = [f"{u!r} -> {n!r}" if len(unknown) > 1 else repr(n) for u in unknown if (n := nearest(u, known))]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""
