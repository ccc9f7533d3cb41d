"""A short preview of a call's arguments, recorded with the call for people to read
(``h.calls()``, the timeline), never read by replay.

It must cost next to nothing for the commonest arguments (a million-call fan-out
makes a million of them) and stay bounded for any argument: a ``repr`` of a large
DataFrame or of a user object could take seconds, so containers and unknown objects
are shown by their type and size, never by their ``repr``.
"""

from __future__ import annotations

from typing import Any

LIMIT = 60  # characters of a whole preview
_TEXT = 24  # characters of one string
_SCALARS = (int, float, bool, type(None))


def arguments_preview(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Like the call's argument list: ``3, 'abc…', frame=DataFrame(100x3)``."""
    if len(args) == 1 and not kwargs:  # the commonest call
        text = _value(args[0])
    else:
        parts = [_value(arg) for arg in args]
        parts += [f"{name}={_value(value)}" for name, value in kwargs.items()]
        text = ", ".join(parts)
    return text if len(text) <= LIMIT else text[: LIMIT - 1] + "…"


def _value(value: Any) -> str:
    kind = type(value)
    if kind in _SCALARS:
        return repr(value)[:_TEXT]
    if kind is str:
        return repr(value) if len(value) <= _TEXT else repr(value[: _TEXT - 1] + "…")
    if kind in (list, tuple, set, frozenset):
        if len(value) <= 3 and all(map(_flat, value)):
            return repr(value)  # small and flat: [1, 2, 3], ('a', 'b')
        return f"{kind.__name__}[{len(value)}]"
    if kind is dict:
        if len(value) <= 2 and all(map(_flat, value)) and all(map(_flat, value.values())):
            return repr(value)
        return f"dict[{len(value)}]"
    if kind is bytes:
        return f"bytes[{len(value)}]"
    shape = getattr(value, "shape", None)  # numpy arrays, pandas objects: no import
    if isinstance(shape, tuple) and all(isinstance(n, int) for n in shape):
        return f"{kind.__name__}({'x'.join(map(str, shape))})"
    return kind.__name__


def _flat(item: Any) -> bool:
    """Cheap to show whole: a scalar or a short string."""
    kind = type(item)
    return kind in _SCALARS or (kind is str and len(item) <= _TEXT)
