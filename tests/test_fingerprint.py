"""Digests of code and arguments: stable across processes, sensitive to what matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from durable_nb import FingerprintError
from durable_nb.fingerprint import arguments_digest, function_digest, value_digest

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
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=8), plain, max_size=6), st.randoms())
def test_dict_order_never_changes_the_digest(d: dict[str, object], rnd) -> None:  # type: ignore[no-untyped-def]
    items = list(d.items())
    rnd.shuffle(items)
    assert value_digest(dict(items)) == value_digest(d)


@given(st.sets(st.integers() | st.text(max_size=4), max_size=8))
def test_set_order_never_changes_the_digest(s: set[object]) -> None:
    assert value_digest(set(reversed(list(s)))) == value_digest(s)
    assert value_digest(frozenset(s)) == value_digest(s)  # equal values, equal digests


def test_types_are_distinguished() -> None:
    digests = {value_digest(v) for v in (1, 1.0, True, "1", b"1", (1,), [1], {1})}
    assert len(digests) == 8


def test_numpy_arrays_hash_by_content() -> None:
    a = np.arange(1000)
    assert value_digest(a) == value_digest(a.copy())
    b = a.copy()
    b[500] = -1
    assert value_digest(a) != value_digest(b)


def test_digests_are_equal_in_another_process() -> None:
    values = {"a": [1, 2.5, None, "x"], "b": {"nested": (True, b"raw")}, "s": {3, 1, 2}}
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        from durable_nb.fingerprint import value_digest, arguments_digest
        values = {"a": [1, 2.5, None, "x"], "b": {"nested": (True, b"raw")}, "s": {3, 1, 2}}
        print(json.dumps([value_digest(values), value_digest(np.arange(10)),
                          arguments_digest("t", (1, "two"), {"k": [3]})]))
        """
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    theirs = json.loads(out.stdout)
    ours = [
        value_digest(values),
        value_digest(np.arange(10)),
        arguments_digest("t", (1, "two"), {"k": [3]}),
    ]
    assert theirs == ours


def test_unfingerprintable_argument_error_names_owner_argument_and_type() -> None:
    with pytest.raises(FingerprintError) as info:
        arguments_digest("activity 'fetch'", (1,), {"lock": threading.Lock()})
    message = str(info.value)
    assert "activity 'fetch'" in message and "'lock'" in message and "lock" in message.lower()
    assert "Pass plain data" in message


def test_code_digest_ignores_comments_docstring_and_decorators(tmp_path) -> None:  # type: ignore[no-untyped-def]
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
        namespace: dict[str, object] = {}
        exec(compile(path.read_text(), str(path), "exec"), namespace)
        fn = namespace["work"]
        digests.append(function_digest(getattr(fn, "__wrapped__", fn)))
    assert digests[0] == digests[1] != digests[2]


def test_version_tag_changes_the_code_digest(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "m.py"
    path.write_text("def work(x):\n    return x\n")
    namespace: dict[str, object] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    fn = namespace["work"]
    assert function_digest(fn) != function_digest(fn, version="2")  # type: ignore[arg-type]


def test_functions_without_source_fall_back_to_bytecode() -> None:
    ns1: dict[str, object] = {}
    ns2: dict[str, object] = {}
    exec("def work(x):\n    return x * 2\n", ns1)
    exec("def work(x):\n    return x * 3\n", ns2)
    assert function_digest(ns1["work"]) != function_digest(ns2["work"])  # type: ignore[arg-type]
