# Release 0.1.0 (commit 69abd6c) durable_nb/fingerprint.py, verbatim below this comment:
# the reference key scheme 1 must reproduce. Test data, imported by tests/test_fingerprint.py.
"""Stable digests of activity code and activity arguments.

Both digests must be equal in every process that sees the same code and the same
values, because they form the call key under which results are checkpointed.

* Code is digested from its AST, so comments, blank lines, formatting, the
  docstring and decorators (retry options, for instance) do not invalidate results;
  a change to the function's logic does.
* Arguments made only of plain data (str, int, float, bool, None, bytes and
  tuples, lists, dicts, sets and frozensets of them) take a fast canonical path;
  anything else goes through :func:`joblib.hash`, which digests numpy arrays and
  DataFrames by content and sorts dict and set items so order never matters.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import inspect
import textwrap
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from durable_nb.errors import FingerprintError

_DIGEST_SIZE = 16


def digest_bytes(data: bytes) -> str:
    """Hex digest (128 bits of BLAKE2b) of ``data``."""
    return hashlib.blake2b(data, digest_size=_DIGEST_SIZE).hexdigest()


# --------------------------------------------------------------------------- code


def _strip_for_digest(node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
    """A copy of ``node`` without decorators and docstring, which do not change behaviour."""
    body = list(node.body)
    first = body[0] if body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
        and len(body) > 1
    ):
        body = body[1:]
    clone = copy.copy(node)
    clone.body = body
    clone.decorator_list = []
    return clone


def node_digest(node: ast.FunctionDef | ast.AsyncFunctionDef, version: str | None = None) -> str:
    """Digest of a function's normalised source, given its AST node."""
    dumped = ast.dump(_strip_for_digest(node), annotate_fields=False, include_attributes=False)
    if version:
        dumped += f"\0version={version}"
    return digest_bytes(dumped.encode())


def _code_digest(code: types.CodeType) -> bytes:
    """Fallback digest material when no source exists (functions built by exec of a string)."""
    parts: list[bytes] = [code.co_code, repr(code.co_names).encode()]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            parts.append(_code_digest(const))
        else:
            parts.append(repr(const).encode())
    return b"\0".join(parts)


def function_digest(fn: Callable[..., Any], version: str | None = None) -> str:
    """Digest of a function's normalised source; bytecode when the source is not available."""
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, IndentationError):
        tree = None
    if tree is not None:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == getattr(
                fn, "__name__", None
            ):
                return node_digest(node, version)
    code = getattr(fn, "__code__", None)
    if code is None:
        raise FingerprintError(
            f"cannot fingerprint the code of {fn!r}: it has neither source nor bytecode; "
            "define it with def in a cell or a module"
        )
    material = _code_digest(code)
    if version:
        material += f"\0version={version}".encode()
    return digest_bytes(material)


# ---------------------------------------------------------------------- arguments

_PRIMITIVE_TAGS: dict[type, bytes] = {
    str: b"s",
    int: b"i",
    float: b"f",
    bool: b"b",
    bytes: b"y",
    type(None): b"n",
}


class _NotPlain(Exception):
    """Internal: the value needs the general-purpose hasher."""


def _encode_plain(value: Any, out: list[bytes]) -> None:
    """Canonical bytes for plain data; raises _NotPlain for anything else."""
    kind = type(value)
    tag = _PRIMITIVE_TAGS.get(kind)
    if tag is not None:
        if kind is str:
            raw = value.encode("utf-8", "surrogatepass")
        elif kind is bytes:
            raw = value
        else:
            raw = repr(value).encode()
        out.append(tag + str(len(raw)).encode() + b":" + raw)
        return
    if kind is tuple or kind is list:
        out.append(b"(" if kind is tuple else b"[")
        for item in value:
            _encode_plain(item, out)
        out.append(b")")
        return
    if kind is dict:
        items: list[tuple[bytes, bytes]] = []
        for key, item in value.items():
            key_out: list[bytes] = []
            item_out: list[bytes] = []
            _encode_plain(key, key_out)
            _encode_plain(item, item_out)
            items.append((b"".join(key_out), b"".join(item_out)))
        items.sort()
        out.append(b"{")
        for key_bytes, item_bytes in items:
            out.append(key_bytes)
            out.append(item_bytes)
        out.append(b"}")
        return
    if kind is set or kind is frozenset:
        members = []
        for item in value:
            item_out = []
            _encode_plain(item, item_out)
            members.append(b"".join(item_out))
        members.sort()
        out.append(b"<")
        out.extend(members)
        out.append(b">")
        return
    raise _NotPlain


def value_digest(value: Any) -> str:
    """Process-independent digest of one value; raises TypeError/PicklingError if impossible."""
    out: list[bytes] = []
    try:
        _encode_plain(value, out)
    except _NotPlain:
        import joblib  # imported lazily: only non-plain arguments need it

        return "j" + str(joblib.hash(value))
    except RecursionError as exc:
        raise TypeError("value is nested too deeply to fingerprint") from exc
    return digest_bytes(b"".join(out))


def arguments_digest(owner: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """Digest of a call's arguments; names ``owner`` and the argument when one fails."""
    parts: list[str] = []
    for index, arg in enumerate(args):
        parts.append(_one(owner, f"positional argument {index}", arg))
    for name in sorted(kwargs):
        parts.append(name + "=" + _one(owner, f"keyword argument {name!r}", kwargs[name]))
    return digest_bytes("|".join(parts).encode())


def _one(owner: str, where: str, value: Any) -> str:
    try:
        return value_digest(value)
    except Exception as exc:  # joblib raises PicklingError, TypeError, AttributeError...
        raise FingerprintError(
            f"{owner}: {where} of type {type(value).__qualname__} cannot be fingerprinted "
            f"({type(exc).__name__}: {exc}). Pass plain data (numbers, strings, lists, dicts, "
            "numpy arrays, DataFrames) or an identifier the activity can resolve itself."
        ) from exc
