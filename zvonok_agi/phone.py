"""Phone numbers at the edge: whatever carriers and people send becomes E.164 digits or None."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import geocoder

DEFAULT_REGION = "RU"
# Longer than any E.164 number written with spaces, brackets and dashes: cheaper to refuse early.
MAX_RAW_LENGTH = 40
# What a written phone number may contain; anything else (letters, `<`, `;`) is not a number.
PHONE_CHARACTERS = re.compile(r"\+?[0-9 ().-]+")
# A Russian number as people write it (the admin API's pattern): `normalize` takes every one.
# `8 10…` is the international prefix, not a Russian number (no Russian number starts +7 10).
RUSSIAN_WRITTEN = r"^\s*(?:\+7|8(?![ ().-]*1[ ().-]*0)|7)(?:[ ().-]*[0-9]){10}\s*$"
# +7 and ten digits: a possible Russian (or Kazakh) number as it stands, no parsing needed.
PLAIN_PLUS_SEVEN = re.compile(r"\+7[0-9]{10}")
# The numbering plan of +7 (Russia, Kazakhstan) tells types and places by ranges: whatever a
# number's last RANGE_DIGITS digits, its type, country and place are its range's (the library's
# patterns end in at least that many free digits, its places' prefixes leave them out; a test
# checks both against the installed data). One parse serves a whole range.
RANGE_DIGITS = 3


def normalize(raw: str | None, region: str = DEFAULT_REGION) -> str | None:
    """E.164 digits without '+' (`+7 (916) 123-45-67` -> `79161234567`), or None when `raw`
    is empty, `anonymous`, `unknown`, garbage or not a possible number.

    Russian numbers (nearly every call's two) take a few string checks and are not cached:
    caching them kept a new entry for each new caller and dropped an old one, which left the
    collector's young generation growing with no pass to walk it (an old entry freed cancels a
    new one in its count) until one pass walked thousands (2-3 ms on the event loop)."""
    if not raw or len(raw) > MAX_RAW_LENGTH:
        return None
    if len(raw) == 11 and raw[0] == "7" and raw.isascii() and raw.isdigit() and region == "RU":
        return raw  # already E.164 digits (an inventory's hundreds of thousands)
    text = raw.strip()
    if not PHONE_CHARACTERS.fullmatch(text):
        return None
    if region == "RU":
        text = _russian_prefix(text)
        if PLAIN_PLUS_SEVEN.fullmatch(text):
            return text[1:]
    return _by_the_plan(text, region)


@functools.lru_cache(maxsize=8192)
def _by_the_plan(text: str, region: str) -> str | None:
    """The library's reading of a number no fast path takes (~55 µs a parse: cached)."""
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)[1:]


def _russian_prefix(text: str) -> str:
    """Russian carriers write the same number as `8…`, `7…` or `+7…`. `810…` is the
    international prefix instead (no Russian or Kazakh number starts +7 10): the library
    reads it."""
    digits = "".join(ch for ch in text if ch.isdigit())
    if text.startswith("+") or len(digits) != 11 or digits.startswith("810"):
        return text
    if digits[0] in "78":
        return "+7" + digits[1:]
    return text


@dataclass(frozen=True, slots=True)
class Plan:
    """What the numbering plan says about a normalised number."""

    type: str  # phonenumbers' number type in lower case: mobile, fixed_line, toll_free, ...
    country: str | None  # ISO 3166 code ("RU"); None when no country's plan has the range
    calling_code: int
    country_name: str  # in English ("Russia"); else the country's code, or the calling code
    region: str | None  # the place within the country (e.g. "Moscow"), when the plan names one
    written: str  # as people read it: +7 495 123-45-67

    @property
    def mobile(self) -> bool:
        return self.type in ("mobile", "fixed_line_or_mobile")


@functools.lru_cache(maxsize=8192)
def plan(e164: str) -> Plan:
    parsed = phonenumbers.parse("+" + e164)
    country = phonenumbers.region_code_for_number(parsed)
    country_name = geocoder.country_name_for_number(parsed, "en")
    region = geocoder.description_for_number(parsed, "en")
    return Plan(
        type=phonenumbers.PhoneNumberType.to_string(phonenumbers.number_type(parsed)).lower(),
        country=country,
        calling_code=parsed.country_code,
        country_name=country_name or country or f"+{parsed.country_code}",
        region=region if region and region != country_name else None,
        written=phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL),
    )


@functools.lru_cache(maxsize=8192)
def written(e164: str) -> str:
    """A normalised number as people read it (+7 495 123-45-67): `plan(e164).written`, without
    the plan's type and place, which take most of its time."""
    parsed = phonenumbers.parse("+" + e164)
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def range_plan(e164: str) -> Plan:
    """What the numbering plan says about a number's range: `plan` but for `written`, which is
    the range's first number's. Parses once per range of +7 numbers (loading half a million
    numbers asks for each)."""
    if len(e164) == 11 and e164[0] == "7":
        return _range_plan(e164[:-RANGE_DIGITS])
    return plan(e164)


@functools.lru_cache(maxsize=65536)
def _range_plan(prefix: str) -> Plan:
    return plan.__wrapped__(prefix + "0" * RANGE_DIGITS)


def describe(e164: str) -> tuple[str, str | None]:
    """(kind, region) of a normalised number: kind `mobile` or `landline`; the region (e.g.
    `Moscow`) when the numbering plan ties the number to one, which for Russian mobile ranges
    it does not."""
    found = range_plan(e164)
    return ("mobile" if found.mobile else "landline"), found.region
