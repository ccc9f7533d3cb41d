"""Canonical bytes of argument values, the material of argument digests.

Plain data (str, int, float, bool, None, bytes and tuples, lists, dicts, sets and
frozensets of them) has one encoding in every key scheme: scheme 1 (release 0.1.0)
stops there, so a plain argument's digest is the same under both schemes and an old
key can be looked up without recomputing anything else.

Scheme 2 also encodes numpy arrays and scalars and pandas Series, DataFrames and
indexes by content, from their dtype, shape and raw little-endian bytes, so that
their digests depend neither on pickle nor on the versions of joblib, numpy or
pandas (0.1.0 hashed them with ``joblib.hash``). numpy and pandas are only looked
up in ``sys.modules``: a value can only be one of their types if they are imported.

Every encoding is self-delimiting (a length prefix, a fixed-size digest or a closing
bracket), so concatenations cannot collide; the one-byte tags of scheme 2 are
distinct from the plain ones.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

_PRIMITIVE_TAGS: dict[type, bytes] = {
    str: b"s",
    int: b"i",
    float: b"f",
    bool: b"b",
    bytes: b"y",
    type(None): b"n",
}


class NotPlain(Exception):
    """The value has no canonical encoding: the caller falls back to ``joblib.hash``."""


def scalar_bytes(value: Any) -> bytes | None:
    """What :func:`encode` appends for a str, int, float, bool, bytes or None (callable
    alone, so the commonest arguments are digested in one call); None for any other value."""
    kind = type(value)
    tag = _PRIMITIVE_TAGS.get(kind)
    if tag is None:
        return None
    if kind is str:
        raw = value.encode("utf-8", "surrogatepass")
    elif kind is bytes:
        raw = value
    else:
        raw = repr(value).encode()
    return b"%s%d:%s" % (tag, len(raw), raw)


def encode(value: Any, out: list[bytes], extended: bool) -> None:
    """Append the canonical bytes of ``value`` to ``out``; raises NotPlain if there are none.

    ``extended`` (scheme 2) adds numpy and pandas values, at any depth.
    """
    scalar = scalar_bytes(value)
    if scalar is not None:
        out.append(scalar)
        return
    kind = type(value)
    if kind is tuple or kind is list:
        out.append(b"(" if kind is tuple else b"[")
        for item in value:
            encode(item, out, extended)
        out.append(b")")
        return
    if kind is dict:
        items: list[tuple[bytes, bytes]] = []
        for key, item in value.items():
            items.append((_encoded(key, extended), _encoded(item, extended)))
        items.sort()  # dict order never matters
        out.append(b"{")
        for key_bytes, item_bytes in items:
            out.append(key_bytes)
            out.append(item_bytes)
        out.append(b"}")
        return
    if kind is set or kind is frozenset:
        members = sorted(_encoded(item, extended) for item in value)
        out.append(b"<")
        out.extend(members)
        out.append(b">")
        return
    if extended:
        try:
            if _encode_numpy(value, out) or _encode_pandas(value, out):
                return
        except (ValueError, TypeError, AttributeError) as exc:
            # A value of a shape this encoder did not foresee (an unusual extension
            # array): the general-purpose hasher still digests it.
            raise NotPlain from exc
    raise NotPlain


def _encoded(value: Any, extended: bool) -> bytes:
    out: list[bytes] = []
    encode(value, out, extended)
    return b"".join(out)


# ------------------------------------------------------------------------- numpy


def _encode_numpy(value: Any, out: list[bytes]) -> bool:
    np: Any = sys.modules.get("numpy")
    if np is None:
        return False
    # Subclasses (masked arrays, matrices, recarrays) carry more than data: not ours.
    if type(value) is np.ndarray:
        out.append(b"A")
        _encode_array(np, value, out)
        return True
    if isinstance(value, np.generic):  # np.float64(1.0), np.str_("a"), np.datetime64(...)
        out.append(b"G")
        _encode_array(np, np.asarray(value), out)
        return True
    return False


def _encode_array(np: Any, array: Any, out: list[bytes]) -> None:
    """dtype, shape and content of an ndarray, independent of byte order and memory layout."""
    dtype = array.dtype
    if dtype.names is not None:
        # Structured: the little-endian descr, then each field as an array of its own;
        # the raw bytes would include padding, whose content is undefined.
        _encode_plain_data(dtype.newbyteorder("<").descr, out)
        _encode_plain_data(tuple(int(n) for n in array.shape), out)
        for name in dtype.names:
            _encode_array(np, array[name], out)
        return
    little = dtype.newbyteorder("<")  # a no-op for "|" (byte-order-free) dtypes
    _encode_plain_data(little.str, out)  # "<f8", "<M8[ns]", "<U5", "|b1", "|O"
    _encode_plain_data(tuple(int(n) for n in array.shape), out)
    if dtype.hasobject:
        out.append(b"o")
        for item in array.flat:  # C order whatever the layout
            encode(item, out, True)
        out.append(b")")
        return
    if little != dtype:
        array = array.astype(little)
    flat = np.ascontiguousarray(array).reshape(-1)
    hasher = hashlib.blake2b(digest_size=16)
    if flat.size and dtype.itemsize:
        # The raw C-order bytes (datetime64/timedelta64: their int64 count of the unit
        # named in the dtype) are digested in place rather than copied into ``out``.
        hasher.update(flat.view(np.uint8))
    out.append(b"d" + hasher.hexdigest().encode())


def _encode_plain_data(value: Any, out: list[bytes]) -> None:
    encode(value, out, False)


# ------------------------------------------------------------------------ pandas


def _encode_pandas(value: Any, out: list[bytes]) -> bool:
    pd: Any = sys.modules.get("pandas")
    if pd is None or not hasattr(pd, "DataFrame"):  # absent, or still being imported
        return False
    kind = type(value)
    if kind is pd.DataFrame:
        out.append(b"D")
        _encode_index(pd, value.columns, out)
        _encode_index(pd, value.index, out)
        for position in range(value.shape[1]):  # by position: column labels may repeat
            _encode_values(pd, value.iloc[:, position], out)
        return True
    if kind is pd.Series:
        out.append(b"S")
        encode(value.name, out, True)
        _encode_index(pd, value.index, out)
        _encode_values(pd, value, out)
        return True
    if isinstance(value, pd.Index):
        _encode_index(pd, value, out)
        return True
    if value is pd.NA:
        out.append(b"!NA")
        return True
    if value is pd.NaT:
        out.append(b"!NaT")
        return True
    return False


def _encode_index(pd: Any, index: Any, out: list[bytes]) -> None:
    if isinstance(index, pd.RangeIndex):
        out.append(b"R")
        encode(index.name, out, True)
        _encode_plain_data((index.start, index.stop, index.step), out)
    elif isinstance(index, pd.MultiIndex):
        out.append(b"M")
        encode(list(index.names), out, True)  # one entry per level: delimits the levels
        for level in range(index.nlevels):
            _encode_values(pd, index.get_level_values(level), out)
    elif isinstance(index, pd.Index):
        out.append(b"I")
        encode(index.name, out, True)
        _encode_values(pd, index, out)
    else:
        raise NotPlain


def _encode_values(pd: Any, values: Any, out: list[bytes]) -> None:
    """The dtype and content of a Series or an Index (not its name or index)."""
    np: Any = sys.modules["numpy"]  # pandas imports numpy
    dtype = values.dtype
    if isinstance(dtype, np.dtype):
        out.append(b"v")
        _encode_array(np, values.to_numpy(), out)
    elif isinstance(dtype, pd.CategoricalDtype):
        categorical = values.array
        out.append(b"c")
        _encode_index(pd, categorical.categories, out)
        _encode_plain_data(bool(categorical.ordered), out)
        _encode_array(np, np.asarray(categorical.codes), out)
    elif isinstance(dtype, pd.DatetimeTZDtype):
        # The instants as counts of the unit since the epoch in UTC; str(dtype) names
        # the unit and the time zone ("datetime64[ns, Europe/Paris]").
        out.append(b"t")
        _encode_plain_data(str(dtype), out)
        utc = values.array.tz_convert("UTC").tz_localize(None)
        _encode_array(np, np.asarray(utc).view("<i8"), out)
    else:
        # Other extension dtypes (nullable integers, strings, booleans...) element by
        # element; elements without an encoding (Period, Interval) raise NotPlain.
        out.append(b"x")
        _encode_plain_data(str(dtype), out)
        _encode_array(np, values.to_numpy(dtype=object), out)
