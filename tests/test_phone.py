"""Numbers at the edge: normalisation (with its fast path for Russian numbers) and kinds."""

from __future__ import annotations

import re

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
    if prefix == "8" and national.startswith("10"):
        return  # 810: the international prefix (below)
    assert phone.normalize.__wrapped__(prefix + national) == by_the_library("+7" + national)


@given(st.text("0123456789", min_size=8, max_size=8))
def test_eleven_digits_after_810_are_read_as_international(rest: str) -> None:
    assert phone.normalize.__wrapped__("810" + rest) == by_the_library("810" + rest)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+7 (916) 123-45-67", "79161234567"),
        ("89161234567", "79161234567"),
        ("79161234567", "79161234567"),
        ("+79161234567", "79161234567"),
        ("+442079460000", "442079460000"),
        ("9161234567", "79161234567"),  # ten digits: national, through the library
        ("8001234567", "78001234567"),  # ... even when they start with 8 or 7
        ("7001234567", "77001234567"),
        ("+81312345678", "81312345678"),  # Japan: eleven digits after '+', never Russian
        ("+8 1312345678", "81312345678"),
        ("8 10 49 30 1234567", "49301234567"),  # 810: the Russian international prefix
        ("81012125551234", "12125551234"),
        ("81050012345", "50012345"),  # eleven digits, yet international (Falklands)
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


@pytest.mark.parametrize("written", ["81010000000", "8 10 1234567890", "8(10)12345678"])
def test_the_international_prefix_is_not_a_russian_number_in_the_api_document(written) -> None:
    assert not re.fullmatch(phone.RUSSIAN_WRITTEN, written)
    assert phone.normalize(written) is None or not phone.normalize(written).startswith("7")
