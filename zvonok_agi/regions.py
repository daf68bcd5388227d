"""Region names as people type them: "moscow", "Москва", "Moskva" and "Московская область" all
name Moscow.

The store names a region by the numbering plan's English description of its numbers
("Moscow", "St Petersburg", "Republic of Tatarstan": `phone.plan`), or as an operator said.
The plan (phonenumbers' geocoder) also describes every Russian prefix in Russian ("г. Москва",
"Московская обл."): those are the Russian names of the English one. A typed name names a region
when their keys are equal; a key folds away case, "ё", punctuation and spaces, administrative
words ("г.", "обл.", "Region", "Republic of") and the ways Latin letters spell Russian sounds,
and reads Cyrillic through the transliteration of Russian passports (ICAO Doc 9303), so that
"Нижний Новгород", "Nizhniy Novgorod" and "Nizhni Novgorod" are one key.
"""

from __future__ import annotations

import difflib
import functools
import re
import unicodedata
from collections.abc import Iterable

import phonenumbers
from phonenumbers import geocoder
from phonenumbers.geodata import GEOCODE_DATA

HOME_COUNTRY = "RU"

# ICAO Doc 9303 (Russian passports since 2013; GOST R 52535.1-2006 but for ъ).
# fmt: off
PASSPORT = str.maketrans({
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "e", "ж": "zh", "з": "z",
    "и": "i", "й": "i", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o", "п": "p", "р": "r",
    "с": "s", "т": "t", "у": "u", "ф": "f", "х": "kh", "ц": "ts", "ч": "ch", "ш": "sh",
    "щ": "shch", "ъ": "ie", "ы": "y", "ь": "", "э": "e", "ю": "iu", "я": "ia",
})
# Words that say what kind of place a name is, not which: the plan writes "г. Москва",
# "Свердловская обл", "Republic of Tatarstan", "Khabarovsk Territory"; people drop or add them.
ADMINISTRATIVE = frozenset({
    "г", "гор", "город", "обл", "область", "р-н", "район", "край", "респ", "республика", "ао",
    "автономный", "автономная", "округ", "city", "region", "oblast", "territory", "krai",
    "kray", "republic", "respublika", "of", "the", "district", "autonomous", "okrug",
})
# fmt: on
SAINT = {"saint": "st", "sankt": "st", "sv": "st"}  # Saint / Sankt- / St Petersburg


def key(name: str) -> str:
    """What two names of one region have in common (see the module's description)."""
    words = re.split(r"[\s.,;:()/]+", unicodedata.normalize("NFKC", name).casefold())
    kept = [w for w in words if w and w not in ADMINISTRATIVE] or words
    parts = [p for w in kept for p in re.split(r"[\W_]+", w) if p]
    return "".join(_fold(SAINT.get(_latin(p), _latin(p))) for p in parts)


def _latin(word: str) -> str:
    decomposed = unicodedata.normalize("NFKD", word.translate(PASSPORT))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _fold(word: str) -> str:
    """One spelling for the ways Latin letters write Russian sounds: й, ы, я as y, j or i
    (Nizhniy, Nizhny, Nizhnii: nizhni), a doubled letter, an initial "Ye"/"Ya" for е/я
    (Yekaterinburg: ekaterinburg), "ye" for е after a vowel (Troitskoye: troitskoe)."""
    word = re.sub(r"(.)\1+", r"\1", word.replace("j", "i").replace("y", "i"))
    return re.sub(r"^i(?=[aeou])", "", word).replace("ie", "e")


@functools.cache
def _plan(country: str = HOME_COUNTRY) -> dict[str, dict[str, set[str]]]:
    """Each region the numbering plan names in `country` (in English): its Russian names and
    its area codes (the prefixes after the country code)."""
    code = str(phonenumbers.country_code_for_region(country))
    plan: dict[str, dict[str, set[str]]] = {}
    for prefix in GEOCODE_DATA:
        if not prefix.startswith(code):
            continue
        number = phonenumbers.parse("+" + prefix.ljust(11, "0"))
        if phonenumbers.region_code_for_number(number) == country:
            english = geocoder.description_for_valid_number(number, "en")
            region = plan.setdefault(english, {"russian": set(), "codes": set()})
            region["russian"].add(geocoder.description_for_valid_number(number, "ru"))
            region["codes"].add(prefix.removeprefix(code))
    mobile = phonenumbers.example_number_for_type(country, phonenumbers.PhoneNumberType.MOBILE)
    plan[geocoder.country_name_for_number(mobile, "en")] = {
        "russian": {geocoder.country_name_for_number(mobile, "ru")},
        "codes": set(),
    }
    return plan


@functools.cache
def plan_regions(country: str = HOME_COUNTRY) -> dict[str, tuple[str, ...]]:
    """The regions the numbering plan names in `country`, each (in English, as the store names
    it) with its Russian names; the country itself too (mobile numbers have no other region)."""
    return {
        english: tuple(sorted(region["russian"] - {english}))
        for english, region in _plan(country).items()
    }


def russian_name(region: str) -> str | None:
    """The Russian name of a region of the plan, for display ("Moscow": "Москва"): its city
    ("г. ...") when the plan names one, else its first Russian description."""
    russian = plan_regions().get(region, ())
    cities = [name.removeprefix("г. ") for name in russian if name.startswith("г. ")]
    return (cities or list(russian) or [None])[0]


@functools.cache
def _sharing_russian_names() -> dict[str, int]:
    """How many of the plan's regions each Russian name is given to."""
    counts: dict[str, int] = {}
    for region in plan_regions():
        name = russian_name(region)
        if name:
            counts[name] = counts.get(name, 0) + 1
    return counts


def display_names(region: str) -> dict[str, str]:
    """A region's names for the page: in English (as the store keeps it) and in Russian (the
    plan's; where the plan has none, as a region an operator named, the name as kept). A
    Russian name the plan gives to several regions says which one it is by its area codes:
    Sochi and Krasnodar Territory are both "Краснодарский край", (код 862) and (код 861)."""
    russian = russian_name(region)
    if russian is None:
        return {"en": region, "ru": region}
    if _sharing_russian_names().get(russian, 0) > 1:
        russian = f"{russian} (код {', '.join(sorted(_plan()[region]['codes']))})"
    return {"en": region, "ru": russian}


class RegionIndex:
    """The regions people may name: the plan's, with their Russian names, and `extra` ones
    (the store's, the configured popular cities)."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.names = dict(plan_regions())
        for region in extra:
            self.names.setdefault(region, ())
        self._own: dict[str, set[str]] = {}  # by the key of the region's own name
        self._regions: dict[str, set[str]] = {}  # by the keys of all its names
        for region, russian in self.names.items():
            self._own.setdefault(key(region), set()).add(region)
            for name in (region, *russian):
                self._regions.setdefault(key(name), set()).add(region)

    def find(self, typed: str) -> list[str]:
        """The regions `typed` names: one, several (it is ambiguous), or none. A region's own
        name comes before the Russian names of others ("Tatarstan" is the Republic of
        Tatarstan, though the plan's Russian for Naberezhnye Chelny is "Республика Татарстан")."""
        if typed in self.names:
            return [typed]
        wanted = key(typed)
        return sorted(self._own.get(wanted) or self._regions.get(wanted, ()))

    def close(self, typed: str, limit: int = 5) -> list[str]:
        """Regions whose names are close to `typed`, closest first (for "did you mean")."""
        wanted = key(typed)
        if not wanted:
            return []
        starting = [k for k in self._regions if len(wanted) >= 3 and k.startswith(wanted)]
        similar = difflib.get_close_matches(wanted, self._regions, n=limit, cutoff=0.75)
        found: list[str] = []
        for k in [*similar, *sorted(starting)]:
            found.extend(sorted(r for r in self._regions[k] if r not in found))
        return found[:limit]
