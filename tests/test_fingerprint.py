"""Digests of code and arguments: stable across processes and Pythons, sensitive to what matters.

Key scheme 1 must give release 0.1.0's digests (tests/fingerprint_010_reference.py is
that release's module) on every Python; scheme 2's digests are pinned below and must
be the same on Python 3.10 to 3.13 and across numpy/pandas versions.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from durable_nb import FingerprintError
from durable_nb import fingerprint_v1 as v1
from durable_nb.fingerprint import (
    KEY_SCHEME,
    SCHEMES,
    arguments_digest,
    function_digest,
    node_digest,
    value_digest,
)


def _load_reference() -> ModuleType:
    path = Path(__file__).with_name("fingerprint_010_reference.py")
    spec = importlib.util.spec_from_file_location("fingerprint_010_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REF = _load_reference()
ON_311 = sys.version_info[:2] == (3, 11)

plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        | st.tuples(inner, inner)
        | st.frozensets(st.integers() | st.text(max_size=3), max_size=3)
    ),
    max_leaves=12,
)


def _function(source: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    node = ast.parse(textwrap.dedent(source)).body[0]
    assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    return node


# ------------------------------------------------------------------ key schemes


def test_this_release_writes_scheme_2_and_computes_1_and_2() -> None:
    assert KEY_SCHEME == 2
    assert SCHEMES == (1, 2)


@pytest.mark.parametrize("scheme", [0, 3, 99])
def test_an_unknown_scheme_is_a_fingerprint_error(scheme: int) -> None:
    node = _function("def f():\n    return 1\n")
    calls = [
        lambda: node_digest(node, scheme=scheme),
        lambda: function_digest(_function, scheme=scheme),
        lambda: value_digest(1, scheme=scheme),
        lambda: arguments_digest("t", (1,), {}, scheme=scheme),
    ]
    for call in calls:
        with pytest.raises(FingerprintError, match="unknown key scheme"):
            call()


# ------------------------------------------------------------------ code digests

# (name, first Python 3 minor version that parses it, source)
SOURCES: list[tuple[str, int, str]] = [
    (
        "simple",
        10,
        '''
@retry(times=3)
def work(x):
    """Docstring, ignored."""
    # a comment, ignored
    return x + 1
''',
    ),
    (
        "signature",
        10,
        """
def sig(a, b=2, /, c: int = 3, *args: str, d, e=None, **kw: "Any") -> list[int]:
    return [a, b, c, *args, d, e, *kw]
""",
    ),
    (
        "fstrings",
        10,
        """
def fmt(x, w, p):
    return (f"{x}", f"a{x!r}b", f"{x=}", f"{x:{w}.{p}f}", f"{x:>{w}}-{w!s:^10}",
            f"{{}}{x:%Y}", rf"\\d{x}", f"{'q'}" "tail", f"{x:}", b"raw", u"old")
""",
    ),
    (
        "match",
        10,
        """
def m(command):
    match command:
        case ["go", direction] if direction in {"n", "s"}:
            return direction
        case {"op": "add", "args": [a, b, *rest]}:
            return a + b
        case Point(x=0, y=yy) | Point(x=yy, y=0):
            return yy
        case str() as s:
            return s
        case None | True | 1.5 | -2 | 3 + 4j:
            return None
        case _:
            return ...
""",
    ),
    (
        "walrus_lambda_comprehensions",
        10,
        """
def comp(items):
    if (n := len(items)) > 2:
        key = lambda item, *, reverse=False: -item if reverse else item
        return (
            [key(i) for i in items if i],
            {i: j for i, j in zip(items, items[1:])},
            {i for row in items for i in row if i > n},
            sum(i * i for i in items),
        )
    return n
""",
    ),
    (
        "async",
        10,
        """
async def fetch(urls, session):
    async with session.get(urls[0]) as first, session.lock():
        results = [r async for r in session.stream(first)]
    async for chunk in session.iter():
        await chunk.release()
    return results
""",
    ),
    (
        "try_except",
        10,
        """
def risky(path):
    try:
        f = open(path)
    except (OSError, ValueError) as exc:
        raise RuntimeError(str(exc)) from exc
    except Exception:
        raise
    else:
        return f.read()
    finally:
        del path
""",
    ),
    (
        "nested_global_nonlocal",
        10,
        """
def outer(n):
    global COUNTER
    total = 0

    class Helper(Base, metaclass=Meta):
        attr: int = 1

        def method(self):
            return self.attr

    def inner(k):
        nonlocal total
        total += k
        return total

    for i in range(n):
        inner(i)
    else:
        COUNTER = total
    while total > 10:
        total //= 2
    return Helper, total
""",
    ),
    (
        "statements",
        10,
        """
def misc(xs, ctx):
    import os.path as osp
    from . import sibling
    from ..pkg import thing as other
    first, *middle, last = xs
    xs[1:2], xs[::2] = [], xs[-1:]
    assert first is not None, "message"
    with ctx as (a, b), open(osp.join("a", "b")) as handle:
        pass
    y = 1 if a < b <= last else -1.5e-3
    yield from middle
    yield y and not a or ~b
""",
    ),
    (
        "unicode",
        10,
        """
def labels(café):
    return {"ideograph": "\\u2ffc", "char": "⿼", "emoji": "🦆", "café": café}
""",
    ),
    (
        "dict_unpacking_calls",
        10,
        """
def call(f, *args, **kwargs):
    merged = {**kwargs, "extra": 1, **{"more": 2}}
    return f(*args, *args, key=1, **merged)(0)[1].attr
""",
    ),
    ("one_statement_docstring", 10, 'def only():\n    """Kept: it is the whole body."""\n'),
    (
        "except_star",
        11,
        """
def group():
    try:
        raise ExceptionGroup("g", [ValueError(1)])
    except* ValueError as eg:
        return eg
    except* (TypeError, KeyError):
        pass
""",
    ),
    (
        "type_params",
        12,
        """
def first[T: (int, str), *Ts, **P](items: list[T]) -> T:
    type Alias[K] = dict[K, T]
    return items[0]
""",
    ),
    (
        "pep701_fstrings",
        12,
        """
def nested(x, items):
    return f"{f"{x!r}"}: {"\\n".join(items)} {x:{"<" if x else ">"}10}"
""",
    ),
]

SCHEME2_CODE = {
    "simple": "203de63ea895e7758467fb4b708c5cbd",
    "signature": "7e1c0d529e41a92b50ce1f94e8769c8e",
    "fstrings": "c1deb81cb957bbdf185562ab4b483474",
    "match": "e67e6eb61414d5e47d0994f7825d9a6f",
    "walrus_lambda_comprehensions": "4b9ef826ea20db483b6f5985e37765f4",
    "async": "70d0175f69dd34f9749994a4a58a19e8",
    "try_except": "f4888952701fbe36ee4efda60a1ae8ff",
    "nested_global_nonlocal": "fd9e0c94eba86290dc6ce190a8403abe",
    "statements": "5874159f59e60d972f28cf3c3fde1b1a",
    "unicode": "408ddbd0cc06259bd5db01e232af3664",
    "dict_unpacking_calls": "8630e406a3622ab3c18426980c004be8",
    "one_statement_docstring": "f1adb0f4f4ed30d5ccfdc6b300bbaf2b",
    "except_star": "7dcbc1bfd86595d40465714bda0d5611",
    "type_params": "a5cddb5220aa7bd288817121b336aaa2",
    "pep701_fstrings": "c6e442a589a34b898fde038b2c768f4a",
}

SCHEME1_CODE = {
    "simple": "1d903d643511b97f41fd4c3d481887ad",
    "signature": "82e0e1117a94f8318ffbbc725f8573c0",
    "fstrings": "dfdb91ef28887fa96ba869d939618980",
    "match": "d026264288fbc27bb5e42a687cfa0131",
    "walrus_lambda_comprehensions": "0446b26b7706d85582452ead1ed11123",
    "async": "884ae1e00b475154c9c62f48c6478d9f",
    "try_except": "9bfedf30c924bc7ec4440e5ba49cb341",
    "nested_global_nonlocal": "430a171e2832e9a51b3cb853cb670106",
    "statements": "6ceb1343d9f448b1efec2ec02363406e",
    "unicode": "aafbec04c59a5035a79849f3e3922357",
    "dict_unpacking_calls": "0c9968502d8d1a17fbf5c77fcfd9bb59",
    "one_statement_docstring": "9269bf88c21d5b4178e3e05dfc80abc0",
    "except_star": "36d9da4475f8f0bca24b945464d2c0ed",
}


@pytest.mark.parametrize(("name", "minor", "source"), SOURCES, ids=[s[0] for s in SOURCES])
def test_scheme_2_code_digests_are_pinned(name: str, minor: int, source: str) -> None:
    """The same on every Python: 3.12's type_params, 3.12.1's f-string parts, 3.13's
    Unicode database and dump defaults do not show."""
    if sys.version_info[1] < minor:
        pytest.skip(f"needs Python 3.{minor}")
    assert node_digest(_function(source)) == SCHEME2_CODE[name]
    assert node_digest(_function(source), scheme=2) == SCHEME2_CODE[name]


@pytest.mark.parametrize("name", sorted(SCHEME1_CODE))
def test_scheme_1_code_digests_are_release_010s_on_python_311(name: str) -> None:
    """Pinned from 0.1.0's own code run on Python 3.11, reproduced on any Python."""
    minor, source = next((m, s) for n, m, s in SOURCES if n == name)
    if sys.version_info[1] < minor:
        pytest.skip(f"needs Python 3.{minor}")
    node = _function(source)
    assert node_digest(node, scheme=1) == SCHEME1_CODE[name]
    if ON_311:
        assert REF.node_digest(node) == SCHEME1_CODE[name]


@pytest.mark.skipif(sys.version_info[:2] > (3, 11), reason="0.1.0's digests were 3.11's text")
@pytest.mark.parametrize("module", [ast, inspect, textwrap, subprocess, dataclasses])
def test_scheme_1_equals_release_010_on_every_function_of_stdlib_modules(
    module: ModuleType,
) -> None:
    """On 3.10 and 3.11, where 0.1.0 ran, scheme 1 is its digest for any function."""
    tree = ast.parse(inspect.getsource(module))
    functions = [
        n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    assert len(functions) > 10
    for node in functions:
        assert node_digest(node, scheme=1) == REF.node_digest(node), node.name
        assert node_digest(node, "7", scheme=1) == REF.node_digest(node, "7"), node.name


def test_the_schemes_give_different_code_digests_and_leave_the_node_alone() -> None:
    node = _function("@decorated\ndef f(x):\n    '''Doc.'''\n    return x\n")
    assert node_digest(node, scheme=1) != node_digest(node, scheme=2)
    assert len(node.decorator_list) == 1 and len(node.body) == 2


@pytest.mark.skipif(not ON_311, reason="the tables record Python 3.11")
def test_the_311_tables_match_python_311() -> None:
    """Regenerate with `python durable_nb/fingerprint_v1.py` on 3.11 if this fails."""
    assert v1._generate_table() == v1.FIELDS_311
    assert tuple(v1._generate_flips()) == v1._FLIPS_311


def test_311_repr_of_strings_on_any_python() -> None:
    # U+2FFC was unassigned (escaped) in 3.11's Unicode 14 and is printable in 3.13.
    assert v1.escape_311("\u2ffc") == "'\\u2ffc'"
    assert v1.escape_311("é'\t\x7f\U0001f986\u0378") == '"é\'\\t\\x7f\U0001f986\\u0378"'
    for code in range(0, sys.maxunicode, 97):
        text = chr(code) + "'\"\\\n" + chr(code + 1)
        if ON_311:
            assert v1.escape_311(text) == repr(text)
        if text.isascii():
            assert v1.escape_311(text) == repr(text)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_code_digest_ignores_comments_docstring_and_decorators(tmp_path: Path, scheme: int) -> None:
    one = tmp_path / "one.py"
    two = tmp_path / "two.py"
    one.write_text("def work(x):\n    return x + 1\n")
    two.write_text(
        "import functools\n\n@functools.lru_cache\ndef work(x):\n    '''Doc.'''\n"
        "    # a comment\n\n    return (x +\n            1)\n"
    )
    three = tmp_path / "three.py"
    three.write_text("def work(x):\n    return x + 2\n")
    digests = []
    for path in (one, two, three):
        namespace: dict[str, Any] = {}
        exec(compile(path.read_text(), str(path), "exec"), namespace)
        fn = namespace["work"]
        digests.append(function_digest(getattr(fn, "__wrapped__", fn), scheme=scheme))
    assert digests[0] == digests[1] != digests[2]


@pytest.mark.parametrize(
    "changed",
    [
        "def work(x, y):\n    return f'{x:{y}}'\n",  # format spec
        "def work(x, y):\n    return f'{x!s:{y}}'\n",  # conversion
        "def work(x, y):\n    return f'{x:>{y}}'\n",  # a literal part
        "def work(x, y):\n    return f'{y:{x}}'\n",  # names swapped
        "def work(x, y):\n    return f'{x:{y}}' + ''\n",
        "def work(x, y):\n    return x\n",
        "async def work(x, y):\n    return f'{x:{y}}'\n",
    ],
)
def test_scheme_2_code_digest_sees_logic_changes(changed: str) -> None:
    base = node_digest(_function("def work(x, y):\n    return f'{x:{y}!r}'\n"))
    assert node_digest(_function(changed)) != base


def test_scheme_2_constants_are_typed() -> None:
    digests = {
        node_digest(_function(f"def f():\n    return {literal}\n"))
        for literal in ("1", "1.0", "True", "'1'", "b'1'", "1j", "None", "...")
    }
    assert len(digests) == 8


@pytest.mark.parametrize("scheme", SCHEMES)
def test_version_tag_changes_the_code_digest(tmp_path: Path, scheme: int) -> None:
    path = tmp_path / "m.py"
    path.write_text("def work(x):\n    return x\n")
    namespace: dict[str, Any] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    fn = namespace["work"]
    assert function_digest(fn, scheme=scheme) != function_digest(fn, version="2", scheme=scheme)
    assert function_digest(fn, "2", scheme=scheme) == node_digest(
        _function(path.read_text()), "2", scheme=scheme
    )


def test_functions_without_source_fall_back_to_bytecode() -> None:
    ns1: dict[str, Any] = {}
    ns2: dict[str, Any] = {}
    exec("def work(x):\n    return x * 2\n", ns1)
    exec("def work(x):\n    return x * 3\n", ns2)
    assert function_digest(ns1["work"]) != function_digest(ns2["work"])
    # Bytecode is no canonical form of ours: every scheme shares the fallback.
    assert function_digest(ns1["work"], scheme=1) == function_digest(ns1["work"], scheme=2)


# ------------------------------------------------------------------ argument digests


OBJ = object  # object dtype spelled out: pandas 3 infers its "str" dtype for strings


def _values() -> dict[str, object]:
    return {
        "none": None,
        "int": 1,
        "big_int": -(2**100),
        "float": 2.5,
        "nan": float("nan"),
        "str": "héllo",
        "bytes": b"\x00\xff",
        "bool": True,
        "nested": {"b": [1, 2.5, None], "a": (True, b"raw"), "s": {3, 1, 2}, "f": frozenset("ab")},
        "int64_2x3": np.arange(6, dtype=np.int64).reshape(2, 3),
        "int64_3x2": np.arange(6, dtype=np.int64).reshape(3, 2),
        "float32": np.linspace(0, 1, 5, dtype=np.float32),
        "float64_big_endian": np.array([1.5, -0.0, np.inf], dtype=">f8"),
        "bool_array": np.array([True, False, True]),
        "complex": np.array([1 + 2j, -1j]),
        "unicode_array": np.array(["a", "é", "xyz"]),
        "bytes_array": np.array([b"a", b"bc"]),
        "datetime64_ns": np.array(["2024-01-01T12:00", "NaT"], dtype="datetime64[ns]"),
        "timedelta64_s": np.array([1, -2], dtype="timedelta64[s]"),
        "object_array": np.array([1, "a", None, (1, 2)], dtype=OBJ),
        "structured": np.array([(1, 2.0), (3, 4.0)], dtype=[("a", "<i4"), ("b", ">f8")]),
        "empty_0x3": np.empty((0, 3)),
        "zero_dim": np.array(7),
        "np_float64": np.float64(1.5),
        "np_int32": np.int32(7),
        "np_datetime64": np.datetime64("2024-01-01", "D"),
        "dict_of_arrays": {"x": np.arange(3), "y": [np.ones(2), {"z": np.float32(1)}]},
        "series": pd.Series(
            [1.0, 2.0, np.nan], index=pd.Index(["a", "b", "c"], dtype=OBJ), name="s"
        ),
        "series_range_index": pd.Series(np.arange(3, dtype=np.int64)),
        "dataframe_named_index": pd.DataFrame(
            {
                "x": np.array([1, 2], dtype=np.int64),
                "y": pd.Series(["a", "b"], dtype=OBJ),
                "t": np.array(["2024-01-01", "2024-02-01"], dtype="datetime64[ns]"),
            },
            index=pd.Index(np.array([10, 20], dtype=np.int64), name="id"),
        ).set_axis(pd.Index(["x", "y", "t"], dtype=OBJ), axis=1),
        "dataframe_tz": pd.DataFrame(
            {
                "t": pd.DatetimeIndex(
                    np.array(["2024-01-01", "2024-06-01"], dtype="datetime64[ns]")
                ).tz_localize("Europe/Paris")
            }
        ).set_axis(pd.Index(["t"], dtype=OBJ), axis=1),
        "categorical": pd.Series(
            pd.Categorical(
                ["a", "b", "a"], categories=pd.Index(["b", "a"], dtype=OBJ), ordered=True
            )
        ),
        "nullable_int": pd.Series([1, None, 3], dtype="Int64"),
        "multiindex": pd.MultiIndex.from_arrays(
            [np.array([1, 2], dtype=np.int64), pd.Index(["a", "b"], dtype=OBJ)], names=["n", "l"]
        ),
        "range_index": pd.RangeIndex(0, 10, 2, name="r"),
        "list_of_dataframes": [
            pd.DataFrame({0: np.array([1], dtype=np.int64)}),
            pd.DataFrame({0: np.array([2.0])}),
        ],
    }


VALUE_DIGESTS = {
    "none": "8962fcd9e334d1012c282d136d724ed7",
    "int": "f1d64ea6fe8bfb28473408dc4b401082",
    "big_int": "623706a060b526e8d3ca38039e8acdcd",
    "float": "a9378cd545d9b9f086a792f84bffa80f",
    "nan": "0c41148ebe12302dc0a81203e3872770",
    "str": "08e7c79847acdf4b62563edbbab29bbe",
    "bytes": "0723d2b462b5dca90c1d98eba6ea3c2e",
    "bool": "0d6d315e4e76ffad64256c94076fe0ab",
    "nested": "b5f2c4e22aa4347075ddbcdd9028a74b",
    "int64_2x3": "e123b554fa5a4f7d1ebd8bed760d3b0b",
    "int64_3x2": "391430147e39f79f5a4721670d28f971",
    "float32": "4ace08594c52e36fe1e2e8bd8d131c5c",
    "float64_big_endian": "f11c43e348921efc09b488111ff19abe",
    "bool_array": "ca7404574feff8876aca37acd9e5f8f0",
    "complex": "16dbf15b9d4dde46e4726a57b07233f2",
    "unicode_array": "fd04c83de7cbb834c56c048e8417bf8f",
    "bytes_array": "8511e71851862f28ec92d46ed97fb31b",
    "datetime64_ns": "444e8d8ecd9f8f557bd3277dfc97b2b3",
    "timedelta64_s": "e72bbbaea28e0a92a7a3d64a178b6c18",
    "object_array": "7bc5808bc58a34ef19c534b79edcda10",
    "structured": "b33cada94987c80bc49ee00d94c7efaf",
    "empty_0x3": "e02558cdb849238988ed594dc81ed5d3",
    "zero_dim": "af8404bb37640cf000f0899f345a7ba3",
    "np_float64": "f52a358bbd2b57b8d70afec8902337b7",
    "np_int32": "a912c8f08bf91d909d36e92a5c653c63",
    "np_datetime64": "b5bb3ba670f294d783e4f076806f485a",
    "dict_of_arrays": "557a7edf3ce219245275464c1db034aa",
    "series": "b3788315141110339a9bbcb49e200e57",
    "series_range_index": "17fbc2fed8fb7a368e48065fb26ff787",
    "dataframe_named_index": "a453ac4edc7a34a67a2e931f09e96c80",
    "dataframe_tz": "1437715cd1ae7bf3bfdc93cdc02d0886",
    "categorical": "574e76f456379cfded49d29482028de0",
    "nullable_int": "ae64b8b731e4220e14d7e362a5e864f9",
    "multiindex": "c75ad5d221ca423db0477272b64d0660",
    "range_index": "1380a8033f07f418c6faf3b1414276df",
    "list_of_dataframes": "54d318be7a24974ab1c222e1f0afa9a6",
}

PLAIN = ["none", "int", "big_int", "float", "nan", "str", "bytes", "bool", "nested"]


@pytest.mark.parametrize("name", sorted(VALUE_DIGESTS))
def test_scheme_2_value_digests_are_pinned(name: str) -> None:
    value = _values()[name]
    assert value_digest(value) == VALUE_DIGESTS[name]
    assert value_digest(value, scheme=2) == VALUE_DIGESTS[name]


@pytest.mark.parametrize("name", PLAIN)
def test_plain_values_digest_alike_in_both_schemes_and_in_release_010(name: str) -> None:
    value = _values()[name]
    assert value_digest(value, scheme=1) == VALUE_DIGESTS[name] == REF.value_digest(value)


@given(plain)
def test_plain_data_has_one_digest_in_every_scheme(value: object) -> None:
    assert value_digest(value, scheme=1) == value_digest(value, scheme=2) == REF.value_digest(value)


@pytest.mark.parametrize("name", sorted(set(VALUE_DIGESTS) - set(PLAIN)))
def test_scheme_1_digests_numpy_and_pandas_values_as_release_010_did(name: str) -> None:
    value = _values()[name]
    assert value_digest(value, scheme=1) == REF.value_digest(value)
    assert value_digest(value, scheme=1).startswith("j")  # joblib.hash, as in 0.1.0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_arguments_digest_takes_a_scheme(scheme: int) -> None:
    plain_args = arguments_digest("t", (1, "two"), {"k": [3]}, scheme=scheme)
    assert plain_args == REF.arguments_digest("t", (1, "two"), {"k": [3]})
    array_args = arguments_digest("t", (np.arange(3),), {}, scheme=scheme)
    assert (array_args == REF.arguments_digest("t", (np.arange(3),), {})) == (scheme == 1)


@given(st.dictionaries(st.text(max_size=8), plain, max_size=6), st.randoms())
def test_dict_order_never_changes_the_digest(d: dict[str, object], rnd: Any) -> None:
    items = list(d.items())
    rnd.shuffle(items)
    assert value_digest(dict(items)) == value_digest(d)


@given(st.sets(st.integers() | st.text(max_size=4), max_size=8))
def test_set_order_never_changes_the_digest(s: set[object]) -> None:
    assert value_digest(set(reversed(list(s)))) == value_digest(s)
    assert value_digest(frozenset(s)) == value_digest(s)  # equal values, equal digests


def test_types_are_distinguished() -> None:
    values = (1, 1.0, True, "1", b"1", (1,), [1], {1}, np.int64(1), np.float64(1.0), np.array(1))
    assert len({value_digest(v) for v in values}) == len(values)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_numpy_arrays_hash_by_content(scheme: int) -> None:
    a = np.arange(1000)
    assert value_digest(a, scheme=scheme) == value_digest(a.copy(), scheme=scheme)
    b = a.copy()
    b[500] = -1
    assert value_digest(a, scheme=scheme) != value_digest(b, scheme=scheme)


def test_scheme_2_arrays_hash_by_content_whatever_the_layout_and_byte_order() -> None:
    a = np.arange(12, dtype="<i4").reshape(3, 4)
    wide = np.zeros((3, 8), dtype="<i4")
    wide[:, ::2] = a
    same = [a.copy(), np.asfortranarray(a), a.astype(">i4"), wide[:, ::2]]
    assert {value_digest(v) for v in same} == {value_digest(a)}
    different = [
        a.astype("<i8"),  # dtype
        a.reshape(4, 3),  # shape, same bytes
        a.T,  # layout of the values
        a + 1,
        a.astype(np.float32),
        a.astype("datetime64[s]"),
        a.astype("datetime64[ms]"),  # unit
    ]
    digests = {value_digest(v) for v in [a, *different]}
    assert len(digests) == len(different) + 1


def test_scheme_2_pandas_values_hash_by_content_and_labels() -> None:
    df = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]}, index=pd.Index([3, 4], name="k"))
    assert value_digest(df) == value_digest(df.copy(deep=True))
    changed = [
        df[["b", "a"]],  # column order
        df.rename(columns={"a": "c"}),
        df.rename_axis("other"),  # index name
        df.set_axis([5, 6]),
        df.astype({"a": "int32"}),
        df.assign(b=[0.5, 2.5]),
        df.reset_index(),
    ]
    assert len({value_digest(v) for v in [df, *changed]}) == len(changed) + 1
    s = df["a"]
    assert value_digest(s) != value_digest(s.rename("z")) != value_digest(s.to_numpy())
    cat = pd.Series(["x", "y", "x"], dtype="category")
    assert value_digest(cat) == value_digest(cat.copy())
    assert value_digest(cat) != value_digest(cat.cat.reorder_categories(["y", "x"]))
    tz = pd.Series(pd.date_range("2024-01-01", periods=2, tz="UTC"))
    assert value_digest(tz) != value_digest(tz.dt.tz_convert("Europe/Paris"))


class Tagged(np.ndarray):  # type: ignore[type-arg]
    """An ndarray subclass, as masked arrays and matrices are."""


class Opaque:
    """No canonical encoding, but joblib can pickle it."""

    def __init__(self) -> None:
        self.x = 1


def test_anything_not_encodable_sends_the_whole_argument_to_joblib() -> None:
    for value in (
        [np.arange(3), Opaque()],
        {"frame": pd.DataFrame({"o": [Opaque()]})},
        np.arange(3).view(Tagged),  # subclasses (masked arrays...) carry more than data
        pd.Series(pd.period_range("2024-01", periods=2, freq="M")),
    ):
        assert value_digest(value).startswith("j")


def test_scheme_2_does_not_pickle_numpy_and_pandas_values(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = {name: value_digest(v) for name, v in _values().items()}

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("pickled")

    import joblib

    monkeypatch.setattr(joblib, "hash", refuse)
    monkeypatch.setattr(pickle, "dumps", refuse)
    monkeypatch.setattr(pickle, "dump", refuse)
    assert {name: value_digest(v) for name, v in _values().items()} == expected


def test_numpy_and_pandas_are_never_imported_to_test_a_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "numpy")
    monkeypatch.delitem(sys.modules, "pandas")
    assert value_digest({"a": [1, 2.5], "b": {3}}) == VALUE_DIGESTS_PLAIN_SAMPLE
    assert "numpy" not in sys.modules and "pandas" not in sys.modules


VALUE_DIGESTS_PLAIN_SAMPLE = REF.value_digest({"a": [1, 2.5], "b": {3}})


def test_digests_are_equal_in_another_process() -> None:
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np, pandas as pd
        from durable_nb.fingerprint import value_digest, arguments_digest
        values = {"a": [1, 2.5, None, "x"], "b": {"nested": (True, b"raw")}, "s": {3, 1, 2}}
        frame = pd.DataFrame({"x": np.arange(3)}, index=pd.Index([1, 2, 3], name="i"))
        print(json.dumps([value_digest(values), value_digest(np.arange(10)),
                          value_digest(np.arange(10), scheme=1), value_digest(frame),
                          arguments_digest("t", (1, "two"), {"k": [3]})]))
        """
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    values = {"a": [1, 2.5, None, "x"], "b": {"nested": (True, b"raw")}, "s": {3, 1, 2}}
    frame = pd.DataFrame({"x": np.arange(3)}, index=pd.Index([1, 2, 3], name="i"))
    ours = [
        value_digest(values),
        value_digest(np.arange(10)),
        value_digest(np.arange(10), scheme=1),
        value_digest(frame),
        arguments_digest("t", (1, "two"), {"k": [3]}),
    ]
    assert json.loads(out.stdout) == ours


def test_unfingerprintable_argument_error_names_owner_argument_and_type() -> None:
    with pytest.raises(FingerprintError) as info:
        arguments_digest("activity 'fetch'", (1,), {"lock": threading.Lock()})
    message = str(info.value)
    assert "activity 'fetch'" in message and "'lock'" in message and "lock" in message.lower()
    assert "Pass plain data" in message


@given(st.text() | st.integers() | st.floats() | st.booleans() | st.none() | st.binary())
def test_a_scalar_is_encoded_as_release_0_1_0_encoded_it(value: Any) -> None:
    """scalar_bytes is what encode appends for a scalar; 0.1.0's encoder, kept verbatim,
    is the oracle for its bytes."""
    from durable_nb.fingerprint_values import encode, scalar_bytes

    expected: list[bytes] = []
    REF._encode_plain(value, expected)
    out: list[bytes] = []
    encode(value, out, True)
    assert scalar_bytes(value) == b"".join(out) == b"".join(expected)


def test_a_scalar_subclass_or_a_container_takes_the_long_path() -> None:
    from durable_nb.fingerprint_values import scalar_bytes

    class Name(str):
        pass

    assert scalar_bytes(Name("a")) is None and scalar_bytes([1]) is None
