"""Unit tests of sandbox/hostcalls.py: the explicit table of host calls and the checks of their arguments.

A fake ``HostSession`` records every method called and its arguments. Covered: each entry of
``METHODS`` reaches the matching session method with the checked arguments; unknown names (however
they look like Python attributes) are 501 and never reach the session; missing arguments, wrong types,
bad key lengths, bad TTLs and increments are 400 naming the argument; values over the size limit are
413 and values nested too deep are 400, checked without recursion.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from sandbox import hostcalls
from sandbox.host import HostCallError
from sandbox.hostcalls import MAX_TTL_S, MAX_VALUE_BYTES, METHODS, call, check_args, check_value
from sandbox.limits import MAX_KEY_CHARS, MAX_VALUE_DEPTH
from sandbox.types import Outcome


class FakeSession:
    """Implements every method of sandbox.host.HostSession; records (method, args) of each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def _record(self, name: str, *args: Any) -> Any:
        self.calls.append((name, args))
        return {"called": name}

    async def userspace_lookup(self, area: str | None, key: str) -> Any:
        return self._record("userspace_lookup", area, key)

    async def asrplus(self, number: str) -> dict[str, Any]:
        return self._record("asrplus", number)

    async def dataset_lookup(self, dataset: str, key: str) -> Any:
        return self._record("dataset_lookup", dataset, key)

    async def datastore_get(self, key: str) -> Any:
        return self._record("datastore_get", key)

    async def datastore_set(self, key: str, value: Any, ttl_s: float | None) -> bool:
        return self._record("datastore_set", key, value, ttl_s)

    async def datastore_incr(self, key: str, by: float, ttl_s: float | None) -> float:
        return self._record("datastore_incr", key, by, ttl_s)

    async def datastore_delete(self, key: str) -> bool:
        return self._record("datastore_delete", key)

    async def userspace_create(self, area: str, key: str, value: Any) -> dict[str, Any]:
        return self._record("userspace_create", area, key, value)

    async def userspace_read(self, area: str, key: str) -> Any:
        return self._record("userspace_read", area, key)

    async def userspace_update(self, area: str, key: str, value: Any) -> dict[str, Any]:
        return self._record("userspace_update", area, key, value)

    async def userspace_delete(self, area: str, key: str) -> bool:
        return self._record("userspace_delete", area, key)

    async def finish(self, outcome: Outcome) -> None:
        self._record("finish", outcome)


VALUE = {"a": [1, 2.5, "x", None, True], "b": {"c": "d"}}

#: method -> (arguments sent, session method reached, arguments it gets)
CASES: dict[str, tuple[list[Any], str, tuple[Any, ...]]] = {
    "lookup.userspaceLookup": (["DNC", "15551234567"], "userspace_lookup", ("DNC", "15551234567")),
    "lookup.asrplus": (["15551234567"], "asrplus", ("15551234567",)),
    "lookup.tps": (["1555"], "dataset_lookup", ("tps", "1555")),
    "lookup.nnpc": (["1555"], "dataset_lookup", ("nnpc", "1555")),
    "lookup.hlr": (["1555"], "dataset_lookup", ("hlr", "1555")),
    "lookup.lrn": (["1555"], "dataset_lookup", ("lrn", "1555")),
    "lookup.ping": (["1555"], "dataset_lookup", ("ping", "1555")),
    "datastore.get": (["k"], "datastore_get", ("k",)),
    "datastore.set": (["k", VALUE, 30], "datastore_set", ("k", VALUE, 30.0)),
    "datastore.incr": (["k", 2.5, None], "datastore_incr", ("k", 2.5, None)),
    "datastore.delete": (["k"], "datastore_delete", ("k",)),
    "userspace.create": (["L", "k", VALUE], "userspace_create", ("L", "k", VALUE)),
    "userspace.read": (["L", "k"], "userspace_read", ("L", "k")),
    "userspace.update": (["L", "k", VALUE], "userspace_update", ("L", "k", VALUE)),
    "userspace.delete": (["L", "k"], "userspace_delete", ("L", "k")),
}


async def _rejected(method: str, args: list[Any]) -> tuple[HostCallError, FakeSession]:
    session = FakeSession()
    with pytest.raises(HostCallError) as info:
        await call(session, method, args)
    return info.value, session


def _nested_lists(depth: int) -> list[Any]:
    """A value whose nesting is ``depth`` lists, built without recursion."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _nested_dicts(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


# ---- the table -----------------------------------------------------------------------------------
def test_every_method_in_the_table_is_covered_here() -> None:
    # a method added to METHODS without a case here fails this test, not silently untested
    assert set(METHODS) == set(CASES)


@pytest.mark.parametrize("method", sorted(CASES))
async def test_each_method_reaches_the_matching_session_method(method: str) -> None:
    args, session_method, expected = CASES[method]
    session = FakeSession()
    result = await call(session, method, args)
    assert session.calls == [(session_method, expected)]
    assert result == {"called": session_method}


async def test_userspace_lookup_one_argument_form_passes_area_none() -> None:
    session = FakeSession()
    await call(session, "lookup.userspaceLookup", ["15551234567"])
    assert session.calls == [("userspace_lookup", (None, "15551234567"))]


async def test_userspace_lookup_without_arguments_is_missing_the_key() -> None:
    err, session = await _rejected("lookup.userspaceLookup", [])
    assert err.code == 400 and "'key'" in err.message and "missing" in err.message
    assert session.calls == []


async def test_userspace_lookup_one_argument_form_checks_it_as_the_key() -> None:
    err, session = await _rejected("lookup.userspaceLookup", [""])
    assert err.code == 400 and "'key'" in err.message
    assert session.calls == []


def test_ttl_given_as_integer_reaches_the_session_as_float() -> None:
    checked = check_args("datastore.set", METHODS["datastore.set"], ["k", 1, 30])
    assert checked == ["k", 1, 30.0]
    assert isinstance(checked[2], float)


# ---- unknown methods -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method",
    [
        "__class__",
        "__init__",
        "__dict__",
        "_datastore_set",
        "datastore_set",
        "datastore.__setattr__",
        "datastore.__class__",
        "datastore.get.__globals__",
        "call",
        "finish",
        "check_args",
        "METHODS",
        "",
        "Datastore.Get",
        "datastore.get ",
        "lookup",
        "lookup.",
        "api.send.sms",
        "userspace.list",
        "x" * 10_000,
    ],
)
async def test_unknown_method_is_501_and_never_reaches_the_session(method: str) -> None:
    err, session = await _rejected(method, ["k", 1, None])
    assert err.code == 501
    assert "is not a host call" in err.message
    assert session.calls == []


# ---- missing arguments ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "args", "missing"),
    [
        ("datastore.get", [], "key"),
        ("datastore.set", [], "key"),
        ("datastore.set", ["k"], "value"),
        ("datastore.set", ["k", 1], "ttl"),
        ("datastore.incr", ["k"], "by"),
        ("datastore.incr", ["k", 1], "ttl"),
        ("datastore.delete", [], "key"),
        ("userspace.create", ["L"], "key"),
        ("userspace.create", ["L", "k"], "value"),
        ("userspace.read", [], "area"),
        ("userspace.read", ["L"], "key"),
        ("userspace.update", ["L", "k"], "value"),
        ("userspace.delete", ["L"], "key"),
        ("lookup.asrplus", [], "number"),
        ("lookup.tps", [], "number"),
    ],
)
async def test_missing_argument_is_400_naming_it(method: str, args: list[Any], missing: str) -> None:
    err, session = await _rejected(method, args)
    assert err.code == 400
    assert f"{method}: argument {missing!r} is missing" in err.message
    assert session.calls == []


# ---- wrong types ---------------------------------------------------------------------------------
WRONG_FOR_STRING = [
    pytest.param(True, "a boolean", id="true"),
    pytest.param(False, "a boolean", id="false"),
    pytest.param(0, "a number", id="zero"),
    pytest.param(15551234567, "a number", id="int"),
    pytest.param(1.5, "a number", id="float"),
    pytest.param(["k"], "an array", id="list"),
    pytest.param([], "an array", id="empty-list"),
    pytest.param({"k": 1}, "an object", id="dict"),
    pytest.param({}, "an object", id="empty-dict"),
]


@pytest.mark.parametrize(("value", "type_name"), WRONG_FOR_STRING)
@pytest.mark.parametrize(
    ("method", "template", "position", "name", "kind"),
    [
        ("datastore.get", ["k"], 0, "key", "a string"),
        ("datastore.set", ["k", 1, None], 0, "key", "a string"),
        ("lookup.tps", ["1"], 0, "number", "a string"),
        ("lookup.asrplus", ["1"], 0, "number", "a string"),
        ("userspace.read", ["L", "k"], 0, "area", "a list name"),
        ("userspace.read", ["L", "k"], 1, "key", "a string"),
        ("userspace.create", ["L", "k", 1], 0, "area", "a list name"),
        ("lookup.userspaceLookup", ["L", "k"], 0, "area", "a list name"),
        ("lookup.userspaceLookup", ["L", "k"], 1, "key", "a string"),
    ],
)
async def test_wrong_type_where_a_string_is_expected_is_400_naming_argument_and_type(
    method: str, template: list[Any], position: int, name: str, kind: str, value: Any, type_name: str
) -> None:
    args = list(template)
    args[position] = value
    err, session = await _rejected(method, args)
    assert err.code == 400
    assert f"argument {name!r} must be {kind}, not {type_name}" in err.message
    assert session.calls == []


@pytest.mark.parametrize(
    ("method", "args", "name"),
    [
        ("datastore.get", [None], "key"),
        ("userspace.read", [None, "k"], "area"),
        ("userspace.read", ["L", None], "key"),
        ("lookup.userspaceLookup", [None], "key"),
        ("lookup.userspaceLookup", [None, "k"], "area"),
    ],
)
async def test_null_where_a_string_is_expected_is_400_naming_argument(
    method: str, args: list[Any], name: str
) -> None:
    err, session = await _rejected(method, args)
    assert err.code == 400
    assert f"argument {name!r} is missing (undefined or null)" in err.message
    assert session.calls == []


# ---- key lengths ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["datastore.get", "datastore.delete", "lookup.tps"])
async def test_empty_and_too_long_keys_are_400(method: str) -> None:
    for bad, length in (("", 0), ("k" * (MAX_KEY_CHARS + 1), MAX_KEY_CHARS + 1)):
        err, session = await _rejected(method, [bad])
        assert err.code == 400
        assert f"must have 1 to {MAX_KEY_CHARS} characters, not {length}" in err.message
        assert session.calls == []


async def test_key_of_exactly_max_key_chars_is_accepted() -> None:
    session = FakeSession()
    key = "k" * MAX_KEY_CHARS
    await call(session, "datastore.get", [key])
    assert session.calls == [("datastore_get", (key,))]


async def test_key_length_counts_characters_not_bytes() -> None:
    session = FakeSession()
    key = "é" * MAX_KEY_CHARS  # 2 bytes each in UTF-8
    await call(session, "datastore.get", [key])
    assert session.calls == [("datastore_get", (key,))]


@pytest.mark.parametrize("bad", ["", "L" * (MAX_KEY_CHARS + 1)])
async def test_empty_and_too_long_list_names_are_400(bad: str) -> None:
    err, session = await _rejected("userspace.create", [bad, "k", 1])
    assert err.code == 400 and "'area'" in err.message
    assert session.calls == []


# ---- TTL -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("ttl", [None, 0, 0.0, -0.0])
def test_no_ttl_is_none(ttl: Any) -> None:
    for method in ("datastore.set", "datastore.incr"):
        checked = check_args(method, METHODS[method], ["k", 1, ttl])
        assert checked[2] is None


@pytest.mark.parametrize("ttl", [0.001, 1, 30.5, MAX_TTL_S])
def test_positive_ttl_up_to_the_maximum_is_accepted(ttl: float) -> None:
    checked = check_args("datastore.set", METHODS["datastore.set"], ["k", 1, ttl])
    assert checked[2] == float(ttl)


@pytest.mark.parametrize(
    "ttl",
    [
        pytest.param(-1, id="negative"),
        pytest.param(-0.5, id="negative-float"),
        pytest.param(math.nan, id="nan"),
        pytest.param(math.inf, id="inf"),
        pytest.param(-math.inf, id="-inf"),
        pytest.param(True, id="true"),
        pytest.param("10", id="string"),
        pytest.param("", id="empty-string"),
        pytest.param([10], id="list"),
        pytest.param({"s": 10}, id="dict"),
        pytest.param(MAX_TTL_S + 1, id="over-ten-years"),
    ],
)
async def test_bad_ttl_is_400(ttl: Any) -> None:
    for method, value in (("datastore.set", "v"), ("datastore.incr", 1)):
        err, session = await _rejected(method, ["k", value, ttl])
        assert err.code == 400
        assert "'ttl'" in err.message and "positive number of seconds" in err.message
        assert session.calls == []


async def test_ttl_false_is_400_like_true() -> None:
    err, session = await _rejected("datastore.set", ["k", "v", False])
    assert err.code == 400 and "'ttl'" in err.message
    assert session.calls == []


# ---- incr's `by` ---------------------------------------------------------------------------------
@pytest.mark.parametrize("by", [1, -1, 0, 2.5, -1e300, 2**53])
async def test_incr_by_a_finite_number_is_accepted(by: float) -> None:
    session = FakeSession()
    await call(session, "datastore.incr", ["k", by, None])
    assert session.calls == [("datastore_incr", ("k", by, None))]


@pytest.mark.parametrize(
    ("by", "type_name"),
    [
        pytest.param(True, "a boolean", id="true"),
        pytest.param(False, "a boolean", id="false"),
        pytest.param(None, "null", id="null"),
        pytest.param("1", "a string", id="string"),
        pytest.param([1], "an array", id="list"),
        pytest.param({"n": 1}, "an object", id="dict"),
        pytest.param(math.nan, "a number", id="nan"),
        pytest.param(math.inf, "a number", id="inf"),
        pytest.param(-math.inf, "a number", id="-inf"),
    ],
)
async def test_incr_by_anything_but_a_finite_number_is_400(by: Any, type_name: str) -> None:
    err, session = await _rejected("datastore.incr", ["k", by, None])
    assert err.code == 400
    assert f"argument 'by' must be a finite number, not {type_name}" in err.message
    assert session.calls == []


# ---- integers a hostile process can smuggle in ---------------------------------------------------
# sandbox/protocol.py parses with orjson and falls back to json.loads for text orjson refuses (a lone
# surrogate, a 400-digit number): that parser makes Python ints of any size, which then reach here.
async def test_incr_by_an_integer_too_large_for_a_float_is_400() -> None:
    err, session = await _rejected("datastore.incr", ["k", 10**400, None])
    assert err.code == 400 and "'by'" in err.message
    assert session.calls == []


async def test_ttl_integer_too_large_for_a_float_is_400() -> None:
    err, session = await _rejected("datastore.set", ["k", 1, 10**400])
    assert err.code == 400 and "'ttl'" in err.message
    assert session.calls == []


async def test_value_with_an_integer_beyond_64_bits_is_a_host_call_error() -> None:
    err, session = await _rejected("datastore.set", ["k", {"n": 2**64}, None])
    assert err.code in (400, 413)
    assert session.calls == []


# ---- values: size --------------------------------------------------------------------------------
async def test_value_at_the_size_limit_is_accepted() -> None:
    session = FakeSession()
    value = "v" * (MAX_VALUE_BYTES - 2)  # plus the two quotes: exactly the limit
    await call(session, "datastore.set", ["k", value, None])
    assert session.calls == [("datastore_set", ("k", value, None))]
    assert check_value("here", value) == MAX_VALUE_BYTES


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("datastore.set", ["k", "v" * (MAX_VALUE_BYTES - 1), None]),
        ("userspace.create", ["L", "k", ["v" * MAX_VALUE_BYTES]]),
        ("userspace.update", ["L", "k", {"v": "x" * MAX_VALUE_BYTES}]),
    ],
)
async def test_value_over_the_size_limit_is_413(method: str, args: list[Any]) -> None:
    err, session = await _rejected(method, args)
    assert err.code == 413
    assert "'value'" in err.message and str(MAX_VALUE_BYTES) in err.message
    assert session.calls == []


async def test_value_size_is_counted_in_utf8_bytes() -> None:
    # "€" is 3 bytes of UTF-8: a third as many characters fill the limit
    value = "€" * (MAX_VALUE_BYTES // 3)
    err, session = await _rejected("datastore.set", ["k", value, None])
    assert err.code == 413
    assert session.calls == []


# ---- values: nesting -----------------------------------------------------------------------------
@pytest.mark.parametrize("build", [_nested_lists, _nested_dicts], ids=["lists", "dicts"])
async def test_value_nested_exactly_at_the_depth_limit_is_accepted(build: Any) -> None:
    session = FakeSession()
    value = build(MAX_VALUE_DEPTH)
    await call(session, "datastore.set", ["k", value, None])
    assert len(session.calls) == 1


@pytest.mark.parametrize("build", [_nested_lists, _nested_dicts], ids=["lists", "dicts"])
async def test_value_nested_one_deeper_than_the_limit_is_400(build: Any) -> None:
    err, session = await _rejected("datastore.set", ["k", build(MAX_VALUE_DEPTH + 1), None])
    assert err.code == 400
    assert f"nested deeper than {MAX_VALUE_DEPTH} levels" in err.message
    assert "'value'" in err.message
    assert session.calls == []


async def test_mixed_nesting_counts_lists_and_objects_alike() -> None:
    value: Any = 1
    for i in range(MAX_VALUE_DEPTH + 1):
        value = [value] if i % 2 else {"k": value}
    err, _ = await _rejected("userspace.create", ["L", "k", value])
    assert err.code == 400


async def test_only_the_deepest_branch_counts() -> None:
    # a wide, shallow value with one branch too deep among many fine ones
    # (the object holding them is the first level)
    value = {f"k{i}": _nested_lists(MAX_VALUE_DEPTH - 2) for i in range(50)}
    value["deep"] = _nested_lists(MAX_VALUE_DEPTH - 1)
    session = FakeSession()
    await call(session, "datastore.set", ["k", value, None])
    assert len(session.calls) == 1
    value["deep"] = _nested_lists(MAX_VALUE_DEPTH)
    err, _ = await _rejected("datastore.set", ["k", value, None])
    assert err.code == 400


async def test_scalars_do_not_count_as_levels() -> None:
    session = FakeSession()
    for scalar in (None, True, 0, 1.5, "s"):
        await call(session, "datastore.set", ["k", scalar, None])
    assert len(session.calls) == 5


async def test_very_deep_value_is_refused_without_recursion_error() -> None:
    # 100,000 levels: a recursive check (or serialiser) would hit the recursion limit first
    err, session = await _rejected("datastore.set", ["k", _nested_lists(100_000), None])
    assert err.code == 400
    assert session.calls == []


def test_very_deep_dict_value_is_refused_without_recursion_error() -> None:
    with pytest.raises(HostCallError) as info:
        check_value("v", _nested_dicts(100_000))
    assert info.value.code == 400


def test_check_value_returns_the_json_size_in_bytes() -> None:
    assert check_value("v", {"a": 1}) == len(b'{"a":1}')
    assert check_value("v", "é") == len('"é"'.encode())


def test_module_limits_are_consistent() -> None:
    # the byte limit is the prelude's character limit at 3 bytes per UTF-16 unit
    from sandbox.limits import MAX_VALUE_CHARS

    assert MAX_VALUE_BYTES == 3 * MAX_VALUE_CHARS
    assert hostcalls.MAX_TTL_S == 10 * 365 * 24 * 3600


@pytest.mark.parametrize(
    ("method", "args", "name"),
    [
        ("datastore.set", [None], "key"),
        ("userspace.create", [None, "k"], "area"),
        ("userspace.update", ["L", None], "key"),
    ],
)
async def test_a_wrong_argument_is_named_before_a_missing_one_after_it(
    method: str, args: list[Any], name: str
) -> None:
    # the prelude leaves an undefined value out: the key before it must still be the one named
    err, session = await _rejected(method, args)
    assert err.code == 400
    assert f"{method}: argument {name!r} is missing (undefined or null)" in err.message
    assert session.calls == []
