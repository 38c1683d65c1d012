"""``scriptforge recording``'s rate argument, without a broker."""

from __future__ import annotations

import pytest

from pipeline.cli.recording import parse_rate
from pipeline.errors import UsageError


@pytest.mark.parametrize(
    ("text", "rate"), [("on", 1.0), ("off", 0.0), ("default", None), ("0.25", 0.25), ("1", 1.0), ("0", 0.0)]
)
def test_words_and_shares(text: str, rate: float | None) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["1.5", "-0.1", "half", "", "nan"])
def test_anything_else_says_what_is_accepted(text: str) -> None:
    with pytest.raises(UsageError, match="on, off, default or a number between 0 and 1"):
        parse_rate(text)
