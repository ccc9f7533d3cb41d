"""Stable digests of activity code and activity arguments.

Both digests must be equal in every process that sees the same code and the same
values, because they form the call key under which results are checkpointed.

* Code is digested from its AST, so comments, blank lines, formatting, the
  docstring and decorators (retry options, for instance) do not invalidate results;
  a change to the function's logic does.
* Arguments made only of plain data (str, int, float, bool, None, bytes and
  tuples, lists, dicts, sets and frozensets of them) take a canonical path whose
  bytes every scheme shares; see :mod:`durable_nb.fingerprint_values`.

How both are computed is versioned as a *key scheme*, recorded with each run so a
later release can still find the results an earlier one checkpointed:

* Scheme 1 is release 0.1.0: the text of Python 3.11's ``ast.dump`` (reproduced on
  any Python by :mod:`durable_nb.fingerprint_v1`), and ``joblib.hash`` for every
  argument that is not plain data.
* Scheme 2 (:data:`KEY_SCHEME`) owns its canonical form of the AST, which is the
  same on Python 3.10 to 3.13, and digests numpy and pandas values by content
  without pickle. Anything else still goes through ``joblib.hash``.
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
from durable_nb.fingerprint_v1 import dump_311
from durable_nb.fingerprint_values import NotPlain, encode, scalar_bytes

KEY_SCHEME = 2
"""The key scheme this release writes."""

SCHEMES = (1, 2)
"""The key schemes this release can compute, to look up results of older releases."""

_DIGEST_SIZE = 16
# Copying a hasher made once costs a third of making one: blake2b() parses its keyword
# arguments and sets its parameter block on every call, and every call key takes two.
_BLAKE2B_128 = hashlib.blake2b(digest_size=_DIGEST_SIZE)


def digest_bytes(data: bytes) -> str:
    """Hex digest (128 bits of BLAKE2b) of ``data``."""
    hasher = _BLAKE2B_128.copy()
    hasher.update(data)
    return hasher.hexdigest()


def _check(scheme: int) -> None:
    if scheme not in SCHEMES:
        raise FingerprintError(
            f"unknown key scheme {scheme!r}: this release of durable_nb computes schemes "
            f"{', '.join(map(str, SCHEMES))}; the store was written by a newer release"
        )


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
    clone = copy.copy(node)  # shallow: the caller's tree is never modified
    clone.body = body
    clone.decorator_list = []
    return clone


def node_digest(
    node: ast.FunctionDef | ast.AsyncFunctionDef,
    version: str | None = None,
    *,
    scheme: int = KEY_SCHEME,
) -> str:
    """Digest of a function's normalised source, given its AST node."""
    _check(scheme)
    stripped = _strip_for_digest(node)
    text = dump_311(stripped) if scheme == 1 else canonical_ast(stripped)
    if version:
        text += f"\0version={version}"
    return digest_bytes(text.encode())


def canonical_ast(node: ast.AST) -> str:
    """Scheme 2's text of a tree: the same for the same source on Python 3.10 to 3.13.

    ``Name(field=value,...)`` for each field in ``_fields`` order, leaving out fields
    that are None or an empty list, so that fields a newer Python adds with such
    defaults (3.12's ``type_params``) change nothing; ``Constant.kind`` (a ``u``
    prefix) and ``type_comment`` are ignored; scalars are tagged with their type and
    written with ascii().
    """
    out: list[str] = []
    _canonical(node, out)
    return "".join(out)


def _canonical(node: object, out: list[str]) -> None:
    if isinstance(node, ast.AST):
        out.append(type(node).__name__ + "(")
        # The value of a Constant or MatchSingleton is data even when it is None.
        keeps_none = isinstance(node, (ast.Constant, ast.MatchSingleton))
        for name in node._fields:
            if name == "type_comment" or (name == "kind" and isinstance(node, ast.Constant)):
                continue
            value = getattr(node, name, None)
            if isinstance(node, ast.JoinedStr) and name == "values":
                value = _fstring_parts(node.values)
            if value is None and not (keeps_none and name == "value"):
                continue
            if isinstance(value, list) and not value:
                continue
            out.append(name + "=")
            _canonical(value, out)
            out.append(",")
        out.append(")")
    elif isinstance(node, list):
        out.append("[")
        for item in node:
            _canonical(item, out)  # None items (Dict.keys for **d) keep their place
            out.append(",")
        out.append("]")
    else:
        # ascii() rather than repr(): repr leaves the characters its Unicode database
        # calls printable unescaped, and that database changes with the Python version.
        out.append(type(node).__name__ + ":" + ascii(node))


def _fstring_parts(values: list[ast.expr]) -> list[ast.expr]:
    """An f-string's parts in one shape on every Python.

    Python 3.12.1 adds empty strings to format specs (``f"{x:{w}}"``); adjacent
    literal parts are merged as well, in case a parser splits them.
    """
    parts: list[ast.expr] = []
    for item in values:
        if isinstance(item, ast.Constant) and type(item.value) is str:
            if not item.value:
                continue
            previous = parts[-1] if parts else None
            if isinstance(previous, ast.Constant) and type(previous.value) is str:
                parts[-1] = ast.Constant(previous.value + item.value)
                continue
        parts.append(item)
    return parts


def _code_digest(code: types.CodeType) -> bytes:
    """Fallback digest material when no source exists (functions built by exec of a string)."""
    parts: list[bytes] = [code.co_code, repr(code.co_names).encode()]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            parts.append(_code_digest(const))
        else:
            parts.append(repr(const).encode())
    return b"\0".join(parts)


def function_digest(
    fn: Callable[..., Any], version: str | None = None, *, scheme: int = KEY_SCHEME
) -> str:
    """Digest of a function's normalised source; bytecode when the source is not available.

    The bytecode fallback (a function made by ``exec`` of a string, which has no
    source file) is the same in every scheme and is NOT stable across Python
    versions: bytecode changes with every minor release, so such a function's
    results are recomputed after an upgrade of Python.
    """
    _check(scheme)
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
                return node_digest(node, version, scheme=scheme)
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


def value_digest(value: Any, *, scheme: int = KEY_SCHEME) -> str:
    """Process-independent digest of one value; raises TypeError/PicklingError if impossible.

    Plain data has the same digest in every scheme. Values without a canonical
    encoding in ``scheme`` are digested whole by ``joblib.hash``, prefixed ``j``.
    """
    _check(scheme)
    return _value_digest(value, scheme)


def _value_digest(value: Any, scheme: int) -> str:
    scalar = scalar_bytes(value)
    if scalar is not None:  # the commonest arguments: encode()'s bytes, made in one call
        return digest_bytes(scalar)
    out: list[bytes] = []
    try:
        encode(value, out, scheme >= 2)
    except NotPlain:
        import joblib  # imported lazily: only non-plain arguments need it

        return "j" + str(joblib.hash(value))
    except RecursionError as exc:
        raise FingerprintError("value is nested too deeply to fingerprint") from exc
    return digest_bytes(b"".join(out))


def arguments_digest(
    owner: str | Callable[[], str],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    scheme: int = KEY_SCHEME,
) -> str:
    """Digest of a call's arguments; names ``owner`` (or what it returns, made only then)
    and the argument when one fails."""
    if scheme not in SCHEMES:
        _check(scheme)
    if len(args) == 1 and not kwargs:  # the commonest call: the same bytes, no join
        scalar = scalar_bytes(args[0])
        if scalar is not None:
            hasher = _BLAKE2B_128.copy()  # digest_bytes twice, inlined: every call's key
            hasher.update(scalar)
            outer = _BLAKE2B_128.copy()
            outer.update(hasher.hexdigest().encode())
            return outer.hexdigest()
    # The happy path builds no message: the failing argument is named from how many
    # digests were made before it.
    parts: list[str] = []
    try:
        for arg in args:
            parts.append(_value_digest(arg, scheme))
        if kwargs:
            for name in sorted(kwargs):
                parts.append(name + "=" + _value_digest(kwargs[name], scheme))
    except Exception as exc:  # joblib raises PicklingError, TypeError, AttributeError...
        who = owner if isinstance(owner, str) else owner()
        raise _unfingerprintable(who, args, kwargs, len(parts), exc) from exc
    return digest_bytes("|".join(parts).encode())


def _unfingerprintable(
    owner: str, args: Sequence[Any], kwargs: Mapping[str, Any], failed: int, exc: Exception
) -> FingerprintError:
    """The error for argument number ``failed`` (positional ones first, then keywords
    sorted by name), which raised ``exc``."""
    if failed < len(args):
        where, value = f"positional argument {failed}", args[failed]
    else:
        name = sorted(kwargs)[failed - len(args)]
        where, value = f"keyword argument {name!r}", kwargs[name]
    return FingerprintError(
        f"{owner}: {where} of type {type(value).__qualname__} cannot be fingerprinted "
        f"({type(exc).__name__}: {exc}). Pass plain data (numbers, strings, lists, dicts, "
        "numpy arrays, DataFrames) or an identifier the activity can resolve itself.",
        argument=where,
    )
