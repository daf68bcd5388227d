"""Numbers at the edge: normalisation (with its fast path for Russian numbers) and kinds."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from zvonok_agi import phone

TEN_DIGITS = st.text("0123456789", min_size=10, max_size=10)


def by_the_library(text: str) -> str | None:
    try:
        parsed = phonenumbers.parse(text, "RU")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)[1:]


@given(TEN_DIGITS, st.sampled_from(["+7", "7", "8"]))
def test_the_fast_path_agrees_with_the_numbering_plan(national: str, prefix: str) -> None:
    assert phone.normalize.__wrapped__(prefix + national) == by_the_library("+7" + national)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+7 (916) 123-45-67", "79161234567"),
        ("89161234567", "79161234567"),
        ("79161234567", "79161234567"),
        ("+79161234567", "79161234567"),
        ("+442079460000", "442079460000"),
        ("", None),
        ("anonymous", None),
        ("unknown", None),
        ("7916123456x", None),
        ('"79161234567"', None),
        ("79161234567\nagi_extension: 1", None),
        ("7" * 41, None),
        ("12", None),
    ],
)
def test_normalize(raw: str, expected: str | None) -> None:
    assert phone.normalize(raw) == expected


def test_describe_tells_kind_and_region() -> None:
    assert phone.describe("74951234567") == ("landline", "Moscow")
    assert phone.describe("79161234567")[0] == "mobile"


@given(st.from_regex(phone.RUSSIAN_WRITTEN, fullmatch=True).filter(
    lambda s: len(s) <= phone.MAX_RAW_LENGTH))
def test_every_russian_number_as_the_api_document_describes_it_is_normalised(written) -> None:
    did = phone.normalize(written)
    assert did is not None and len(did) == 11 and did.startswith("7"), written
