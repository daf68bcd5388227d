"""Input the control plane refuses or understands (issue 8's acceptance findings): invisible and
control characters in free text, the cap on open requests, numbers that are no city landline,
regions as people type them."""

from __future__ import annotations

import pytest

from numbers_helpers import ACME, MOSCOW_1, control_plane, refused, small_world, table
from zvonok_agi.inventory import InventoryError
from zvonok_agi.numbers.importer import read_file

INVISIBLE = [
    ("zero-width space", "Ac\u200bme", "U+200B"),
    ("bidi override", "\u202eemcA", "U+202E"),
    ("bidi isolate", "Acme\u2066x\u2069", "U+2066"),
    ("byte order mark", "\ufeffAcme", "U+FEFF"),
    ("soft hyphen", "Ac\u00adme", "U+00AD"),
    ("tab", "Acme\tLtd", "U+0009"),
    ("newline", "Acme\nLtd", "U+000A"),
    ("C1 control", "Acme\x85", "U+0085"),
    ("delete", "Acme\x7f", "U+007F"),
    ("private use", "Acme\ue000", "U+E000"),
    ("lone surrogate", "Acme\udc80", "U+DC80"),
    ("line separator", "Acme\u2028Ltd", "U+2028"),
    ("tag character", "Acme\U000e0041", "U+E0041"),
]


@pytest.fixture
async def service(settings, store_url):
    async with control_plane(settings, store_url) as svc:
        await small_world(svc)
        yield svc


async def business_tables(store_url: str) -> dict[str, list]:
    return {
        name: await table(store_url, f"SELECT * FROM {name} ORDER BY 1")
        for name in ("accounts", "numbers", "campaigns", "requests")
    }


# free text


@pytest.mark.parametrize("what, value, code_point", INVISIBLE, ids=[i[0] for i in INVISIBLE])
async def test_every_free_text_field_refuses_invisible_and_control_characters(
    service, store_url, what, value, code_point
):
    offer = await service.offer("web", ACME, "mobile", "Omsk")
    before = await business_tables(store_url)
    calls = [
        lambda: service.create_account("web", "zeta", value),
        lambda: service.update_account("web", ACME, name=value),
        lambda: service.offer("web", ACME, "landline", value),
        lambda: service.add_number("web", "+7 383 200-00-09", region=value),
        lambda: service.close_request("web", offer.request.id, value),
        lambda: service.numbers_view(search=value),
    ]
    for call in calls:
        error = await refused("bad_input", call())
        assert code_point in error.message
    assert await business_tables(store_url) == before


async def test_ordinary_text_in_any_script_is_kept(service):
    account = await service.create_account("web", "zeta", "  ООО «Ромашка» — Zeta & Co.\u00a0 ")
    assert account.name == "ООО «Ромашка» — Zeta & Co."
    assert (await service.account("zeta")).name == account.name


@pytest.mark.parametrize("ident", ["acme\n", "acme\r\n", "ac me", "acme\u200b", "аcme"])
async def test_an_id_with_anything_but_letters_digits_dash_underscore_is_refused(service, ident):
    for call in (
        lambda: service.create_account("web", ident),
        lambda: service.create_campaign("web", ident, ACME, "outbound"),
        lambda: service.bind("web", MOSCOW_1, ident),
    ):
        await refused("bad_input", call())


async def test_the_loader_refuses_invisible_characters_too(service, tmp_path):
    path = tmp_path / "inv.toml"
    path.write_text('[[accounts]]\nid = "zeta"\nname = "Ze\\u200bta"\n', encoding="utf-8")
    error = await refused("bad_input", service.import_inventory("import", *read_file(path)))
    assert "account zeta" in error.message and "U+200B" in error.message
    assert [a.id for a in await service.accounts()] == [ACME, "newbie", "oldco"]
    path.write_text(
        '[[numbers]]\ndid = "+7 843 200-30-40"\nregion = "Kazan\\u202e"\n', encoding="utf-8"
    )
    with pytest.raises(InventoryError, match=r"numbers\[0\]: region holds .*U\+202E"):
        read_file(path)
    path.write_text('[[accounts]]\nid = "zeta\\n"\n', encoding="utf-8")
    with pytest.raises(InventoryError, match="letters, digits"):
        read_file(path)


# open requests


async def test_an_account_may_have_only_a_few_open_requests(service, store_url):
    regions = ["Omsk", "Tomsk", "Irkutsk", "Kaliningrad", "St Petersburg"]
    filed = [(await service.offer("web", ACME, "landline", r)).request for r in regions]
    assert len({r.id for r in filed}) == service.max_open_requests == 5
    again = await service.offer("web", ACME, "landline", "Omsk")
    assert again.request == filed[0]  # asking again for an open one is still fine
    before = await business_tables(store_url)
    error = await refused("too_many_requests", service.offer("web", ACME, "mobile", "Omsk"))
    assert "5 open requests" in error.message and "call you back" in error.message
    assert await business_tables(store_url) == before
    [entry, *_] = await service.audit_log("mobile:Omsk")
    assert (entry["action"], entry["outcome"]) == ("request_number", "too_many_requests")
    assert (await service.offer("web", "oldco", "mobile", "Omsk")).request  # per account
    await service.close_request("sales", filed[0].id)
    assert (await service.offer("web", ACME, "mobile", "Omsk")).request.status == "open"


# numbers we keep: Russian mobile and city numbers

UNSUPPORTED = [
    ("+7 800 555-35-35", "toll free"),
    ("8 (809) 555-35-35", "premium rate"),
    ("+44 20 7946 0958", "United Kingdom"),
    ("+7 7172 00 00 00", "Kazakhstan"),
    ("+1 212 555 0100", "United States"),
]


@pytest.mark.parametrize("did, why", UNSUPPORTED, ids=[u[1] for u in UNSUPPORTED])
async def test_toll_free_and_foreign_numbers_are_never_kept(service, store_url, did, why):
    before = await business_tables(store_url)
    for pool in ("reservable", "service"):
        error = await refused("unsupported_number", service.add_number("ops", did, pool))
        assert why in error.message
    # an operator's kind and region do not make one a city number either
    error = await refused(
        "unsupported_number",
        service.add_number("ops", did, kind="landline", region="Moscow"),
    )
    assert why in error.message
    assert await business_tables(store_url) == before
    assert all(r.region != "Unknown" for r in await service.regions("landline"))


async def test_the_kind_and_region_come_from_the_numbering_plan(service):
    landline = await service.add_number("ops", "+7 (383) 200-00-09")
    assert (landline.kind, landline.region) == ("landline", "Novosibirsk")
    mobile = await service.add_number("ops", "8 916 200-00-09")
    assert (mobile.kind, mobile.region) == ("mobile", "Russia")
    told = await service.add_number("ops", "8 916 200-00-08", region="Moscow")
    assert (told.kind, told.region) == ("mobile", "Moscow")
    error = await refused(
        "unsupported_number", service.add_number("ops", "8 916 200-00-07", kind="landline")
    )
    assert "give its region" in error.message  # a landline needs a city


async def test_a_range_the_plan_does_not_know_needs_the_operators_word(service):
    error = await refused("unsupported_number", service.add_number("ops", "+7 000 000-00-01"))
    assert "does not know +7 0000000001: give its kind and region" in error.message
    number = await service.add_number("ops", "+7 000 000-00-01", kind="landline", region="Omsk")
    assert (number.kind, number.region) == ("landline", "Omsk")


async def test_the_loader_refuses_a_toll_free_number_saying_which(service, tmp_path):
    path = tmp_path / "inv.toml"
    path.write_text('[[numbers]]\ndid = "+7 495 200-00-09"\n[[numbers]]\ndid = "8 800 555 35 35"\n')
    error = await refused(
        "unsupported_number", service.import_inventory("import", *read_file(path))
    )
    assert error.message.startswith("number 78005553535: +7 800 555-35-35 is a toll free")
    assert (await service.numbers_view(search="74952000009")).rows == []


# regions as people type them


@pytest.mark.parametrize(
    "typed",
    [
        "Moscow",
        "moscow",
        "MOSCOW",
        " Moscow ",
        "Москва",
        "москва",
        "Moskva",
        "г. Москва",
        "Московская область",
        "moskovskaya oblast",
    ],
)
async def test_a_region_typed_in_russian_or_english_finds_its_numbers(service, typed):
    offer = await service.offer("web", ACME, "landline", typed)
    assert (offer.region, offer.request) == ("Moscow", None)
    assert [n.did for n in offer.numbers] == [MOSCOW_1, "74951110002"]
    assert await service.requests() == []


@pytest.mark.parametrize(
    "typed, region",
    [
        ("Санкт-Петербург", "St Petersburg"),
        ("Saint Petersburg", "St Petersburg"),
        ("st. petersburg", "St Petersburg"),
        ("Екатеринбург", "Ekaterinburg"),
        ("Yekaterinburg", "Ekaterinburg"),
        ("Нижний Новгород", "Nizhni Novgorod"),
        ("Nizhny Novgorod", "Nizhni Novgorod"),
        ("Новосибирск", "Novosibirsk"),
        ("Татарстан", "Republic of Tatarstan"),
        ("Приморье", "Primorie territory"),
        ("Россия", "Russia"),
    ],
)
async def test_a_known_region_without_numbers_files_the_request_under_its_name(
    service, typed, region
):
    offer = await service.offer("web", ACME, "landline", typed)
    assert (offer.region, offer.numbers) == (region, [])
    [request] = await service.requests()
    assert (request.region, request.kind) == (region, "landline")
    again = await service.offer("web", ACME, "landline", region)  # the same region: one request
    assert again.request == request


async def test_a_region_an_operator_named_is_found_by_its_russian_spelling(service):
    offer = await service.offer("web", ACME, "landline_popular", "Казань")
    assert offer.region == "Kazan" and [n.did for n in offer.numbers] == ["78432000001"]


async def test_an_unknown_region_is_refused_with_close_names_and_files_nothing(service):
    error = await refused("unknown_region", service.offer("web", ACME, "landline", "Moskow"))
    assert error.choices == ("Moscow",)
    assert error.message == "we know no region called 'Moskow': did you mean Moscow?"
    error = await refused("unknown_region", service.offer("web", ACME, "mobile", "Atlantis"))
    assert (error.choices, error.message) == ((), "we know no region called 'Atlantis'")
    assert await service.requests() == []
    [entry, *_] = await service.audit_log("mobile:Atlantis")
    assert (entry["action"], entry["outcome"]) == ("request_number", "unknown_region")


async def test_an_ambiguous_region_is_refused_with_its_choices(service):
    error = await refused(
        "ambiguous_region", service.offer("web", ACME, "landline", "Краснодарский край")
    )
    assert error.choices == ("Krasnodar Territory", "Sochi")
    assert "choose one" in error.message
    offer = await service.offer("web", ACME, "landline", error.choices[1])
    assert offer.request.region == "Sochi"


async def test_popular_cities_keep_their_configured_names(service):
    popular = await service.regions("landline_popular")
    for city in [r.region for r in popular]:
        offer = await service.offer("web", "oldco", "landline_popular", city)
        assert offer.region == city
