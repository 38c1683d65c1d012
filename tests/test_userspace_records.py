"""The user-space record format (pipeline/state/userspace.py): keys that cannot collide, NUL refused,
values that round-trip."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from pipeline.errors import MalformedMessageError
from pipeline.state.userspace import decode_value, encode_value, list_prefix, record_key, split_key

# parts chosen to spell each other when naively joined: separators, prefixes, empty-looking text
ACCOUNTS = ["a", "ab", "a b", "acme", "ä"]
AREAS = ["DNC", "DNC/x", "x/DNC", "/", "a/b", "D", "DN", "é\u2028", "\x01", "ab"]
KEYS = ["1555", "/1555", "C/1555", "x\x01y", "", "\u00ff", "b", "🙂", " "]


def test_no_two_triples_share_a_key() -> None:
    triples = [(acc, area, key) for acc, area, key in itertools.product(ACCOUNTS, AREAS, KEYS) if key]
    keys = {record_key(*t): t for t in triples}
    assert len(keys) == len(triples)


def test_a_key_splits_back_into_its_triple() -> None:
    for triple in itertools.product(ACCOUNTS, AREAS, [k for k in KEYS if k]):
        assert split_key(record_key(*triple)) == triple


def test_a_lists_prefix_starts_its_keys_only() -> None:
    for account, area in itertools.product(ACCOUNTS, AREAS):
        prefix = list_prefix(account, area)
        for other_acc, other_area, key in itertools.product(ACCOUNTS, AREAS, ["1", "/x", "\x01"]):
            inside = record_key(other_acc, other_area, key).startswith(prefix)
            assert inside == ((other_acc, other_area) == (account, area))


@pytest.mark.parametrize(
    ("account", "area", "key"),
    [("a\0", "DNC", "1"), ("a", "D\0NC", "1"), ("a", "DNC", "1\x005"), ("a", "DNC", "\0")],
)
def test_nul_is_refused(account: str, area: str, key: str) -> None:
    with pytest.raises(ValueError, match="must not contain"):
        record_key(account, area, key)


@pytest.mark.parametrize(
    ("account", "area", "key"), [("a/b", "DNC", "1"), ("", "DNC", "1"), ("a", "", "1"), ("a", "DNC", "")]
)
def test_a_slash_in_the_account_and_empty_parts_are_refused(account: str, area: str, key: str) -> None:
    with pytest.raises(ValueError):
        record_key(account, area, key)


@pytest.mark.parametrize(
    "value",
    ["blocked", "", 0, -1.5, True, None, [1, "x", None], {"a": {"b": [1, 2]}, "é": "🙂"}, "x" * 70_000],
)
def test_values_round_trip(value: Any) -> None:
    assert decode_value(encode_value(value)) == value


def test_a_value_that_is_not_json_is_a_malformed_message() -> None:
    with pytest.raises(MalformedMessageError, match="not JSON"):
        decode_value(b"\xff{not json")
