"""The page's words: both catalogues hold the same keys and placeholders, Russian plural forms
(one, few, many, other), nothing left in the other language, every key the page uses exists
and every key is used, and every refusal code and audit action the server can send has words.
(What the browser shows in each language is checked in test_web_page.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from zvonok_agi.web import app

PAGE = Path(app.__file__).parent / "page"
SOURCE = Path(app.__file__).parents[1]
CATALOGUES = {lang: json.loads((PAGE / f"{lang}.json").read_text("utf-8")) for lang in ("ru", "en")}
PLURALS = {"ru": {"one", "few", "many", "other"}, "en": {"one", "other"}}
LATIN, CYRILLIC = re.compile(r"[A-Za-z]"), re.compile(r"[А-Яа-яЁё]")
# The language switch names the other language in that language.
OTHER_SCRIPT = {"language.switch"}


def forms(value) -> list[str]:
    return list(value.values()) if isinstance(value, dict) else [value]


def placeholders(text: str) -> set[str]:
    return set(re.findall(r"\{(\w+)\}", text))


def used_keys() -> tuple[set[str], set[str]]:
    """(keys named whole, prefixes of keys built at run time) in the page's markup and script."""
    html = (PAGE / "index.html").read_text("utf-8")
    script = "\n".join(p.read_text("utf-8") for p in PAGE.glob("*.js"))
    keys = set(re.findall(r'data-i18n="([\w.]+)"', html))
    for pairs in re.findall(r'data-i18n-attr="([^"]+)"', html):
        keys |= {pair.split(":")[1] for pair in pairs.split(";")}
    keys |= set(re.findall(r'\b(?:tp?|showSignIn|signedOut)\(\s*"([\w.]+)"', script))
    for a, b in re.findall(r'\?\s*"([a-z_]+\.[\w.]+)"\s*:\s*"([a-z_]+\.[\w.]+)"', script):
        keys |= {a, b}  # t(flag ? "one.key" : "other.key")
    prefixes = set(re.findall(r"`([a-z_]+\.[\w.]*)\$\{", script))
    return keys, prefixes


def test_both_catalogues_have_the_same_keys_and_placeholders():
    ru, en = CATALOGUES["ru"], CATALOGUES["en"]
    assert set(ru) == set(en), set(ru) ^ set(en)
    for key in ru:
        assert isinstance(ru[key], dict) == isinstance(en[key], dict), key
        for lang, value in (("ru", ru[key]), ("en", en[key])):
            if isinstance(value, dict):
                assert set(value) == PLURALS[lang], (lang, key)
        wanted = placeholders(forms(en[key])[0])
        for text in forms(ru[key]) + forms(en[key]):
            assert placeholders(text) == wanted, (key, text)


@pytest.mark.parametrize("lang, other", [("ru", LATIN), ("en", CYRILLIC)])
def test_nothing_is_left_in_the_other_language(lang, other):
    for key, value in CATALOGUES[lang].items():
        for text in forms(value):
            bare = re.sub(r"\{\w+\}", "", text)
            if key not in OTHER_SCRIPT:
                assert not other.search(bare), (lang, key, text)
    for key, value in CATALOGUES["ru"].items():  # the same words in both: untranslated
        words = re.sub(r"\{\w+\}", "", json.dumps(value, ensure_ascii=False))
        if LATIN.search(words) or CYRILLIC.search(words):
            assert value != CATALOGUES["en"][key], key


def test_russian_plural_forms_follow_the_count():
    assert CATALOGUES["ru"]["count.numbers"] == {
        "one": "{n} номер",
        "few": "{n} номера",
        "many": "{n} номеров",
        "other": "{n} номера",
    }


def test_every_key_the_page_uses_exists_and_every_key_is_used():
    keys, prefixes = used_keys()
    catalogue = set(CATALOGUES["ru"])
    assert keys - catalogue == set()
    for prefix in prefixes:
        assert any(k.startswith(prefix) for k in catalogue), prefix
    unused = {k for k in catalogue - keys if not any(k.startswith(p) for p in prefixes)}
    assert unused == set()


def test_every_refusal_and_audit_action_has_words():
    source = "\n".join(p.read_text("utf-8") for p in SOURCE.rglob("*.py"))
    codes = set(app.STATUS) | set(app.HTTP_CODES.values()) | {"internal_error"}
    codes |= set(re.findall(r'Refused\(\s*"(\w+)"', source))
    codes |= set(re.findall(r'super\(\).__init__\(\s*"(\w+)"', source))
    missing = {c for c in codes if f"error.{c}" not in CATALOGUES["ru"]}
    assert missing == set()
    actions = set(re.findall(r'_change\(\s*[^,()]+,\s*"(\w+)"', source))
    actions |= set(re.findall(r'\.audit\(\s*[^,()]+(?:\(\))?,\s*[^,()]+,\s*"(\w+)"', source))
    actions |= set(re.findall(r'_audit\(\s*actor,\s*"(\w+)"', source))
    assert {"reserve", "change_number", "sign_in", "support_request", "sync"} <= actions
    missing = {a for a in actions if f"action.{a}" not in CATALOGUES["ru"]}
    assert missing == set()
