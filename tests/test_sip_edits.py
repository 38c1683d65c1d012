"""What of a script's routing may go into a SIP request (pipeline/routes/sip.py): a script is customer
code, and its routing is written into a live INVITE only when every part of it is safe."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.routes.sip import REASON_MAX, RoutingRefusedError, SipEdits, reason_phrase, sip_edits

DEST, CLI = "15550000000", "15557654321"


def edits(routing: Any, given: dict[str, str] | None = None) -> SipEdits:
    return sip_edits(routing, DEST, CLI, given or {})


def test_an_unchanged_routing_changes_nothing() -> None:
    assert edits({"dest_number": DEST, "cli": CLI}) == SipEdits(None, None, [])
    assert edits({}) == SipEdits(None, None, [])  # fields left out are left as they were


def test_a_new_destination_and_cli_are_applied() -> None:
    assert edits({"dest_number": "+4415559990001", "cli": "+44" + CLI}) == SipEdits(
        "+4415559990001", "+44" + CLI, []
    )


def test_a_number_given_as_a_json_number_is_a_user_part() -> None:
    assert edits({"dest_number": 15559990001}).dest_number == "15559990001"


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("dest_number", "1555\r\nVia: SIP/2.0/UDP evil", "dest_number '1555\\r\\nVia"),
        ("dest_number", "1555 0000", "not a SIP user part"),
        ("dest_number", "", "not a SIP user part"),
        ("dest_number", "1" * 65, "not a SIP user part"),
        ("dest_number", "sip:1555@evil.example", "not a SIP user part"),
        ("cli", "<sip:x@y>", "cli '<sip:x@y>' is not a SIP user part"),
        ("cli", {"user": "1555"}, "cli is a dict, not a SIP user part"),
        ("cli", None, "cli is a NoneType"),
        ("dest_number", True, "dest_number is a bool"),
    ],
)
def test_a_user_part_that_could_break_the_message_refuses_the_routing(
    field: str, value: Any, says: str
) -> None:
    with pytest.raises(RoutingRefusedError) as refused:
        edits({field: value})
    assert says in str(refused.value)


@pytest.mark.parametrize("routing", [None, "15550000000", ["dest_number"], 42])
def test_a_routing_that_is_not_an_object_is_refused(routing: Any) -> None:
    with pytest.raises(RoutingRefusedError, match="no routing object"):
        edits(routing)


def test_headers_as_an_object_set_what_changed_and_remove_what_was_dropped() -> None:
    given = {"X-Keep": "1", "X-Change": "a", "X-Drop": "z"}
    returned = {"X-Keep": "1", "X-Change": "b", "X-New": "yes"}
    assert edits({"headers": returned}, given).headers == [
        ("X-Change", "b"),
        ("X-New", "yes"),
        ("X-Drop", None),
    ]


def test_a_header_set_to_null_is_removed_and_scalars_are_text() -> None:
    returned = {"X-Gone": None, "X-Count": 3, "X-Flag": True}
    assert edits({"headers": returned}, {"X-Gone": "1"}).headers == [
        ("X-Gone", None),
        ("X-Count", "3"),
        ("X-Flag", "true"),
    ]


def test_headers_as_a_list_of_key_value_are_each_added() -> None:
    returned = [{"key": "X-Screened", "value": "yes"}, {"key": "X-Empty"}]
    assert edits({"headers": returned}).headers == [("X-Screened", "yes"), ("X-Empty", "")]


@pytest.mark.parametrize(
    "name",
    [
        "Via",
        "VIA",
        "v",
        "From",
        "f",
        "To",
        "t",
        "Call-ID",
        "i",
        "CSeq",
        "Contact",
        "m",
        "Route",
        "Record-Route",
        "Max-Forwards",
        "Content-Length",
        "l",
        "Content-Type",
        "c",
    ],
)
def test_a_header_that_holds_the_call_together_may_not_be_set_or_removed(name: str) -> None:
    with pytest.raises(RoutingRefusedError, match="may not be set"):
        edits({"headers": {name: "x"}})
    with pytest.raises(RoutingRefusedError, match="may not be set"):
        edits({"headers": [{"key": name, "value": "x"}]})
    with pytest.raises(RoutingRefusedError, match="may not be set"):
        edits({"headers": {}}, {name: "x"})  # dropped from those given: a removal


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("X-A", "yes\r\nVia: SIP/2.0/UDP evil", "not one SIP header line"),
        ("X-A", "yes\nX-B: 1", "not one SIP header line"),
        ("X-A", "nul\x00", "not one SIP header line"),
        ("X-A", "x" * 513, "not one SIP header line"),
        ("X-A", {"nested": 1}, "has a dict value"),
        ("X-A", [1, 2], "has a list value"),
        ("X A", "1", "may not be set"),
        ("X-A:", "1", "may not be set"),
        ("X-A\r\nVia", "1", "may not be set"),
        ("", "1", "may not be set"),
        ("X" * 65, "1", "may not be set"),
    ],
)
def test_a_header_that_is_not_one_line_or_not_a_token_refuses_the_routing(
    name: str, value: Any, says: str
) -> None:
    with pytest.raises(RoutingRefusedError, match=says):
        edits({"headers": {name: value}})


@pytest.mark.parametrize("headers", ["X-A: 1", 7, [["X-A", "1"]], [{"value": "1"}]])
def test_headers_of_another_shape_are_refused(headers: Any) -> None:
    with pytest.raises(RoutingRefusedError, match="headers"):
        edits({"headers": headers})


def test_one_bad_part_refuses_all_of_it() -> None:
    # a good new destination beside a bad header: nothing is applied (the caller gets 500), not half
    with pytest.raises(RoutingRefusedError):
        edits({"dest_number": "15559990001", "headers": {"Via": "x"}})


@pytest.mark.parametrize(
    ("message", "phrase"),
    [
        ("Denied (DNC)", "Denied (DNC)"),
        ("Denied\r\nX-Evil: 1", "Denied  X-Evil: 1"),
        ("\r\n", "Rejected"),
        ("", "Rejected"),
        (None, "Rejected"),
        (603, "603"),
        ("x" * 500, "x" * REASON_MAX),
    ],
)
def test_a_rejection_message_becomes_one_line_reason_phrase(message: Any, phrase: str) -> None:
    assert reason_phrase(message) == phrase
