"""Region names as people type them, matched through the numbering plan's own English and
Russian descriptions (phonenumbers' geocoder), never through a table of our own."""

from __future__ import annotations

import re

import pytest

from zvonok_agi import regions
from zvonok_agi.regions import RegionIndex, key, plan_regions


@pytest.mark.parametrize(
    "names",
    [
        ("Moscow", "moscow", "MOSCOW"),
        ("Москва", "г. Москва", "Moskva", "МОСКВА"),
        ("St Petersburg", "St. Petersburg", "Saint Petersburg", "Saint-Petersburg"),
        ("Санкт-Петербург", "Sankt-Peterburg", "г. Санкт-Петербург"),
        ("Nizhni Novgorod", "Nizhny Novgorod", "Nizhniy Novgorod", "Нижний Новгород"),
        ("Ekaterinburg", "Yekaterinburg", "Екатеринбург", "Ёкатеринбург"),
        ("Republic of Tatarstan", "Tatarstan", "Республика Татарстан", "Татарстан"),
        ("Свердловская обл", "Свердловская область", "Sverdlovskaya oblast"),
    ],
)
def test_names_of_one_place_have_one_key(names):
    assert len({key(name) for name in names}) == 1, {name: key(name) for name in names}


def test_different_places_have_different_keys():
    assert len({key(n) for n in ("Moscow", "Omsk", "Tomsk", "Kazan", "Orel", "Sochi")}) == 6


def test_the_plan_gives_russias_regions_with_their_russian_names():
    plan = plan_regions()
    assert set(plan["Moscow"]) == {"г. Москва", "Московская обл."}
    assert plan["St Petersburg"] == ("г. Санкт-Петербург",)
    assert plan["Russia"] == ("Россия",)
    assert "Astana" not in plan  # +7 7xx is Kazakhstan's
    assert len(plan) > 80 and all(plan.values())
    assert (regions.russian_name("Moscow"), regions.russian_name("Ekaterinburg")) == (
        "Москва",
        "Свердловская обл",
    )
    assert regions.russian_name("Kazan") is None  # not a region of the plan


def test_each_region_of_the_plan_has_a_russian_name_of_its_own_in_russian():
    shown = {region: regions.display_names(region)["ru"] for region in plan_regions()}
    assert [name for name in shown.values() if re.search("[A-Za-z]", name)] == []
    assert len(set(shown.values())) == len(shown)
    assert (shown["Sochi"], shown["Krasnodar Territory"]) == (
        "Краснодарский край (код 862)",
        "Краснодарский край (код 861)",
    )
    assert regions.display_names("Kazan") == {"en": "Kazan", "ru": "Kazan"}  # as named


def test_every_region_of_the_plan_is_found_by_each_of_its_names():
    index = RegionIndex()
    for region, russian in plan_regions().items():
        assert index.find(region) == [region]
        for name in russian:  # unless it is another region's own name
            found = index.find(name)
            assert region in found or all(key(f) == key(name) for f in found), name


def test_an_extra_region_is_found_and_close_names_are_suggested():
    index = RegionIndex(["Kazan"])
    assert index.find("казань") == ["Kazan"]
    assert index.find("Краснодарский край") == ["Krasnodar Territory", "Sochi"]
    assert index.find("Atlantis") == []
    assert index.close("Moskow") == ["Moscow"]
    assert index.close("Новосиб") == ["Novosibirsk"]
    assert index.close("") == []
