"""One failed check: the offending config key and why, and how to print an exception briefly."""

from __future__ import annotations


class RecipeError(Exception):
    """One failed check: the offending config key and why."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def exception_chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def brief(exc: BaseException) -> str:
    """The first line of each exception in the chain, at most three."""
    parts = []
    for e in exception_chain(exc):
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if line not in parts:
            parts.append(f"{type(e).__name__}: {line}")
    return " <- ".join(parts[:3])
