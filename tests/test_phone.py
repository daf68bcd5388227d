"""Numbers at the edge: normalisation (with its fast path for Russian numbers) and kinds."""

from __future__ import annotations

import dataclasses
import gc
import re

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st
from phonenumbers.geodata import GEOCODE_DATA

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
    assert phone.normalize(prefix + national) == by_the_library("+7" + national)


@given(st.text("0123456789", min_size=8, max_size=8))
def test_eleven_digits_after_810_are_read_as_international(rest: str) -> None:
    assert phone.normalize("810" + rest) == by_the_library("810" + rest)


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


@given(
    st.from_regex(phone.RUSSIAN_WRITTEN, fullmatch=True).filter(
        lambda s: len(s) <= phone.MAX_RAW_LENGTH
    )
)
def test_every_russian_number_as_the_api_document_describes_it_is_normalised(written) -> None:
    did = phone.normalize(written)
    assert did is not None and len(did) == 11 and did.startswith("7"), written


@pytest.mark.parametrize("written", ["81010000000", "8 10 1234567890", "8(10)12345678"])
def test_the_international_prefix_is_not_a_russian_number_in_the_api_document(written) -> None:
    assert not re.fullmatch(phone.RUSSIAN_WRITTEN, written)
    assert phone.normalize(written) is None or not phone.normalize(written).startswith("7")


# Every pattern the library matches a +7 number against to tell its country and type.
PLAN_PATTERNS = (
    "general_desc",
    "fixed_line",
    "mobile",
    "toll_free",
    "premium_rate",
    "shared_cost",
    "personal_number",
    "voip",
    "pager",
    "uan",
    "voicemail",
    "no_international_dialling",
)


def free_digits_at_the_end(pattern: str) -> int:
    """How many trailing digits no alternative of `pattern` looks at (`…\\d{7}` leaves 7):
    a digit string matches `A\\d{n}` exactly when its part before the last n matches `A`."""
    alternatives, depth, start = [], 0, 0
    for i, ch in enumerate(pattern):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "|" and depth == 0:
            alternatives.append(pattern[start:i])
            start = i + 1
    alternatives.append(pattern[start:])
    tails = [re.search(r"\\d\{(\d+)\}$", alternative) for alternative in alternatives]
    return min(int(tail[1]) if tail else 0 for tail in tails)


def test_the_plan_of_plus_seven_goes_by_ranges_of_the_last_digits() -> None:
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[7]:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        # Russia's "[3489]", Kazakhstan's "7": which country, told by the first digits alone
        leading = re.sub(r"\[[0-9-]+\]", "X", metadata.leading_digits or "").split("|")
        assert all(re.fullmatch(f"[0-9X]{{0,{10 - phone.RANGE_DIGITS}}}", d) for d in leading)
        for name in PLAN_PATTERNS:
            desc = getattr(metadata, name)
            if desc is not None and desc.national_number_pattern:
                tail = free_digits_at_the_end(desc.national_number_pattern)
                assert tail >= phone.RANGE_DIGITS, (region, name, desc.national_number_pattern)
    places = [prefix for prefix in GEOCODE_DATA if prefix.startswith("7")]
    assert max(map(len, places)) <= 11 - phone.RANGE_DIGITS


@given(st.text("0123456789", min_size=10, max_size=10))
def test_a_number_is_described_as_its_range(national: str) -> None:
    number, ranged = phone.plan("7" + national), phone.range_plan("7" + national)
    assert dataclasses.replace(ranged, written=number.written) == number


@given(
    st.sampled_from(["7", "1", "44", "49", "380", "86"]),
    st.text("0123456789", min_size=6, max_size=10),
)
def test_a_number_is_written_as_its_plan_writes_it(code: str, national: str) -> None:
    assert phone.written(code + national) == phone.plan(code + national).written


def test_normalizing_new_numbers_keeps_nothing_for_the_collector() -> None:
    """Each call normalizes two numbers, most never seen before. What it keeps of them (a
    cache entry: one new, one old dropped) stays in the collector's young generation with no
    pass coming to walk it (a freed old object cancels a new one in the collector's count),
    until one pass walks thousands: so Russian numbers are kept nowhere."""
    written = [
        form.format(i) for i in range(3000) for form in ("7903{:07d}", "+7903{:07d}", "8903{:07d}")
    ]
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects(generation=0))
        for raw in written:
            phone.normalize(raw, "RU")  # as the engine calls it
        kept = len(gc.get_objects(generation=0)) - before
    finally:
        gc.enable()
    assert kept < 10
