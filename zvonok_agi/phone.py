"""Phone numbers at the edge: whatever carriers and people send becomes E.164 digits or None."""

from __future__ import annotations

import functools
import re

import phonenumbers
from phonenumbers import geocoder

DEFAULT_REGION = "RU"
# Longer than any E.164 number written with spaces, brackets and dashes: cheaper to refuse early.
MAX_RAW_LENGTH = 40
# What a written phone number may contain; anything else (letters, `<`, `;`) is not a number.
PHONE_CHARACTERS = re.compile(r"^\+?[0-9 ().-]+$")
# +7 and ten digits: a possible Russian (or Kazakh) number as it stands, no parsing needed.
PLAIN_PLUS_SEVEN = re.compile(r"\+7[0-9]{10}")


@functools.lru_cache(maxsize=8192)
def normalize(raw: str | None, region: str = DEFAULT_REGION) -> str | None:
    """E.164 digits without '+' (`+7 (916) 123-45-67` -> `79161234567`), or None when `raw`
    is empty, `anonymous`, `unknown`, garbage or not a possible number."""
    if not raw:
        return None
    text = raw.strip()
    if len(text) > MAX_RAW_LENGTH or not PHONE_CHARACTERS.match(text):
        return None
    if region == "RU":
        text = _russian_prefix(text)
        if PLAIN_PLUS_SEVEN.fullmatch(text):
            return text[1:]
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


@functools.lru_cache(maxsize=8192)
def describe(e164: str) -> tuple[str, str | None]:
    """(kind, region) of a normalised number: kind `mobile` or `landline`; the region (e.g.
    `Moscow`) when the numbering plan ties the number to one, which for Russian mobile ranges
    it does not."""
    parsed = phonenumbers.parse("+" + e164)
    kind = phonenumbers.number_type(parsed)
    mobile = kind in (
        phonenumbers.PhoneNumberType.MOBILE,
        phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
    )
    region = geocoder.description_for_number(parsed, "en")
    country = geocoder.country_name_for_number(parsed, "en")
    return ("mobile" if mobile else "landline"), (region if region and region != country else None)
