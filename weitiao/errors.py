"""User-facing errors: one line saying what, where and how to fix; the CLI prints it and exits 1."""

import difflib
import functools


class UserError(Exception):
    """A mistake in the user's input (file, config, flag), reported without a traceback."""


def where(path: object, line: int | None = None, field: str | None = None) -> str:
    """Format a location as `file:line: field`."""
    loc = str(path)
    if line is not None:
        loc += f":{line}"
    if field:
        loc += f": {field}"
    return loc


@functools.lru_cache(maxsize=4096)
def near_miss(key: str, known: tuple[str, ...], cutoff: float = 0.8) -> str | None:
    """The entry of `known` that `key` is a typo of (the same but for case and surrounding spaces, else difflib ratio
    ≥ `cutoff`: `Input` and ` output` are typos of input and output), or None (also when `key` is known)."""
    if key in known:
        return None
    if same := next((k for k in known if k.casefold() == key.strip().casefold()), None):
        return same
    close = difflib.get_close_matches(key, known, n=1, cutoff=cutoff)
    return close[0] if close else None
