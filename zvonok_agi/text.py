"""Free text at the edge: names, regions, notes that people type.

Text may be in any script, but not hold characters a reader cannot see or that change how the
text around them reads: control characters (a tab or a line break included), format characters
(zero-width spaces, bidi overrides), private-use code points, lone surrogates, and line or
paragraph separators. The refused set is read from Unicode's categories, and the OpenAPI
document describes the same set (`json_schema()`), so the two cannot disagree; but for lone
surrogates, which a JSON escape can make in Python but no regex engine of other languages takes
in a pattern (their strings cannot hold them).
"""

from __future__ import annotations

import functools
import sys
import unicodedata

# Control, format, private use, surrogate; line and paragraph separators break lines as \n does.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Zl", "Zp"})
CATEGORY_NAMES = {
    "Cc": "a control character",
    "Cf": "an invisible formatting character",
    "Co": "a private-use character",
    "Cs": "a lone surrogate",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


def refused_character(text: str) -> str | None:
    """A sentence naming the first refused character of `text`, or None when there is none."""
    for position, ch in enumerate(text, 1):
        category = unicodedata.category(ch)
        if category in REFUSED_CATEGORIES:
            return (
                f"{CATEGORY_NAMES[category]} (U+{ord(ch):04X}) at character {position}: "
                "type it again without it"
            )
    return None


def _ranges(test) -> tuple[tuple[int, int], ...]:
    ranges: list[list[int]] = []
    for code in range(sys.maxunicode + 1):
        if test(chr(code)):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return tuple((first, last) for first, last in ranges)


def _refused(ch: str) -> bool:
    return unicodedata.category(ch) in REFUSED_CATEGORIES


def _class(ranges: tuple[tuple[int, int], ...]) -> str:
    """A regex character class body. Code points of the basic plane are written as \\uXXXX
    (read alike by Python and ECMA-262 engines); the others as themselves."""

    def one(code: int) -> str:
        return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)

    return "".join(one(a) if a == b else f"{one(a)}-{one(b)}" for a, b in ranges)


def _refused_but_surrogate(ch: str) -> bool:
    return _refused(ch) and unicodedata.category(ch) != "Cs"


@functools.cache
def json_schema(required: bool = False) -> dict:
    """The JSON Schema keywords for text without refused characters (`required`: with a
    character that is not white space). "Holds none of these" rather than "is made of all but
    these": no `$` (which lets a final line break through in Python), and no huge negated
    class (private-use planes 15 and 16 in one slow fuzzers' regex strategies a hundredfold)."""
    schema: dict = {"not": {"pattern": f"[{_class(_ranges(_refused_but_surrogate))}]"}}
    if required:  # \S: the engines differ only on characters refused anyway
        schema["pattern"] = r"\S"
    return schema
