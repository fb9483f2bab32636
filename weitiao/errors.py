"""User-facing errors: one line saying what, where and how to fix; the CLI prints it and exits 1."""


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
