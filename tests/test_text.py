"""Free text at the edge: the refused characters, and the pattern the OpenAPI document gives for
them, which must agree with the check for every character."""

from __future__ import annotations

import re
import sys
import unicodedata

import jsonschema_rs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from zvonok_agi import text


def validators(required: bool) -> tuple:
    """The document's schema for free text, as Python's and Rust's (jsonschema-rs) validators
    read it."""
    schema = {"type": "string", **text.json_schema(required)}
    return Draft202012Validator(schema), jsonschema_rs.validator_for(schema)


VALIDATORS = {required: validators(required) for required in (False, True)}


def test_the_schema_and_the_check_agree_on_every_code_point() -> None:
    refused = re.compile(text.json_schema()["not"]["pattern"])  # what the validators search
    for code in range(sys.maxunicode + 1):
        ch = chr(code)
        if unicodedata.category(ch) == "Cs":  # no regex of other languages can name them
            assert text.refused_character(ch) is not None
        else:
            assert (refused.search(ch) is None) == (text.refused_character(ch) is None), code


@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=12))
def test_the_schemas_and_the_check_agree_on_any_text(value: str) -> None:
    allowed = text.refused_character(value) is None
    for required, both in VALIDATORS.items():
        expected = allowed and (bool(value.strip()) or not required)
        assert [v.is_valid(value) for v in both] == [expected, expected], required


@pytest.mark.parametrize(
    "value",
    ["Москва", " Zeta & Co. ", "a\u200bb", "a\tb", "x\n", "x\U000e0041", "x\U00100000", "  ", ""],
)
def test_both_validators_read_the_schemas_alike(value: str) -> None:
    for required, both in VALIDATORS.items():
        expected = text.refused_character(value) is None and (value.strip() or not required)
        assert [v.is_valid(value) for v in both] == [bool(expected)] * 2, required


def test_the_message_names_the_character_and_where_it_is() -> None:
    assert text.refused_character("Ac\u200bme") == (
        "an invisible formatting character (U+200B) at character 3: type it again without it"
    )
    assert "a control character (U+0009)" in text.refused_character("a\tb")
    assert text.refused_character("Москва, ул. Льва Толстого\u00a016") is None
