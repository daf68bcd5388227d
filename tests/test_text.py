"""Free text at the edge: the refused characters, and the pattern the OpenAPI document gives for
them, which must agree with the check for every character."""

from __future__ import annotations

import re
import sys

from hypothesis import given
from hypothesis import strategies as st

from zvonok_agi import text

ANY = re.compile(text.pattern())
REQUIRED = re.compile(text.pattern(required=True))


def test_the_pattern_and_the_check_agree_on_every_code_point() -> None:
    for code in range(sys.maxunicode + 1):
        ch = chr(code)
        assert bool(ANY.fullmatch(ch)) == (text.refused_character(ch) is None), hex(code)


@given(st.text(st.characters(codec=None), max_size=12))
def test_the_patterns_and_the_check_agree_on_any_text(value: str) -> None:
    allowed = text.refused_character(value) is None
    assert bool(ANY.fullmatch(value)) == allowed
    assert bool(REQUIRED.fullmatch(value)) == (allowed and bool(value.strip()))


def test_the_message_names_the_character_and_where_it_is() -> None:
    assert text.refused_character("Ac\u200bme") == (
        "an invisible formatting character (U+200B) at character 3: type it again without it"
    )
    assert "a control character (U+0009)" in text.refused_character("a\tb")
    assert text.refused_character("Москва, ул. Льва Толстого\u00a016") is None
