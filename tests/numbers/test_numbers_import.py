"""The inventory TOML imported into the control plane's store (what `zvonok-agi load` does)."""

from __future__ import annotations

from pathlib import Path

import pytest

from numbers_helpers import control_plane
from zvonok_agi.inventory import InventoryError
from zvonok_agi.numbers.importer import read_file
from zvonok_agi.numbers.rules import Refused

DEMO = Path(__file__).resolve().parents[2] / "config" / "demo-inventory.toml"


@pytest.fixture
async def service(settings, tmp_path):
    async with control_plane(settings, tmp_path / "numbers.db") as svc:
        yield svc


async def test_the_demo_inventory_imports_and_is_published(service):
    inventory, overrides = read_file(DEMO)
    counts = await service.import_inventory("import", inventory, overrides)
    assert counts["accounts"] == len(inventory.accounts)
    view = await service.numbers_view()
    assert len(view.rows) + view.tabs["disabled"] == len(inventory.numbers)
    moscow = (await service.number("74951234567")).row
    assert (moscow.number.kind, moscow.number.region, moscow.number.owner) == (
        "landline", "Moscow", "acme")
    assert moscow.dialing == ["spring-sale"]
    snapshot = await service.data.load()
    assert snapshot.numbers["74951234567"].inbound_campaign == "support"
    assert set(snapshot.campaigns) == {c.id for c in inventory.campaigns}
    assert await service.pending() == 0
    again = await service.import_inventory("import", inventory, overrides)  # idempotent
    assert again == counts
    assert (await service.number("74951234567")).row.number.reserved_at == \
        moscow.number.reserved_at


async def test_kind_and_region_can_be_overridden(service, tmp_path):
    path = tmp_path / "inv.toml"
    path.write_text(
        '[[numbers]]\ndid = "+7 843 200-30-40"\nregion = "Kazan"\n\n'
        '[[numbers]]\ndid = "+7 903 200-30-40"\nkind = "mobile"\nregion = "Moscow"\n'
    )
    await service.import_inventory("import", *read_file(path))
    regions = await service.regions("landline_popular")
    assert {r.region: r.available for r in regions}["Kazan"] == 1
    assert [(r.region, r.available) for r in await service.regions("mobile")] == [("Moscow", 1)]


async def test_a_bad_override_is_a_clear_error(tmp_path):
    path = tmp_path / "inv.toml"
    path.write_text('[[numbers]]\ndid = "+7 843 200-30-40"\nkind = "fax"\n')
    with pytest.raises(InventoryError, match=r"numbers\[0\]: kind must be one of"):
        read_file(path)


async def test_an_import_breaking_a_rule_writes_nothing(service, tmp_path):
    path = tmp_path / "inv.toml"
    path.write_text(
        '[[accounts]]\nid = "acme"\nverified = true\n[[accounts]]\nid = "other"\n'
        '[[campaigns]]\nid = "sale"\naccount = "other"\nkind = "outbound"\n'
        'caller_id = "74951234567"\n'
        '[[numbers]]\ndid = "74951234567"\nowner = "acme"\n'
    )
    with pytest.raises(Refused) as info:
        await service.import_inventory("import", *read_file(path))
    assert info.value.code == "not_verified" and "campaign sale" in info.value.message
    assert await service.accounts() == []
    assert (await service.data.load()).accounts == {}
    assert (await service.audit_log())[0]["outcome"] == "not_verified"


async def test_a_file_may_give_a_scenario_and_never_drops_one_set_elsewhere(service, tmp_path):
    path = tmp_path / "inv.toml"
    base = '[[accounts]]\nid = "acme"\n[[campaigns]]\nid = "line"\naccount = "acme"\n' \
        'kind = "inbound"\n'
    path.write_text(base + '[campaigns.scenario]\nplay = "hello"\n'
                    '[campaigns.scenario.operators]\nqueue = "sales"\n')
    await service.import_inventory("import", *read_file(path))
    [line] = await service.campaigns()
    assert line.scenario.play == "hello" and line.scenario.operators.queue == "sales"
    await service.update_campaign("ops", "line", scenario={"play": "summer"})
    path.write_text(base)  # no scenario in the file: the one set through the API stays
    await service.import_inventory("import", *read_file(path))
    [line] = await service.campaigns()
    assert line.scenario.play == "summer"
    assert (await service.data.load()).campaigns["line"].scenario == line.scenario


async def test_a_bad_scenario_in_a_file_is_a_clear_error(tmp_path):
    path = tmp_path / "inv.toml"
    path.write_text('[[campaigns]]\nid = "line"\naccount = "acme"\nkind = "inbound"\n'
                    '[campaigns.scenario]\nplay = "../etc/passwd"\n')
    with pytest.raises(InventoryError, match=r"campaigns\[0\]: scenario.play: '../etc/passwd' is "
                       "not a recording name"):
        read_file(path)


# large files: JSON Lines, TOML read in chunks, batches


def test_json_lines_read_like_the_same_toml(tmp_path):
    toml, jsonl = tmp_path / "inv.toml", tmp_path / "inv.jsonl"
    toml.write_text(
        '[[accounts]]\nid = "acme"\nverified = true\n'
        '[[campaigns]]\nid = "line"\naccount = "acme"\nkind = "inbound"\n'
        '[[numbers]]\ndid = "+7 495 111-00-01"\nowner = "acme"\ninbound_campaign = "line"\n'
        '[[numbers]]\ndid = "74950000001"\npool = "service"\nregion = "Moscow"\n'
    )
    jsonl.write_text(
        '{"account": {"id": "acme", "verified": true}}\n'
        '{"campaign": {"id": "line", "account": "acme", "kind": "inbound"}}\n\n'
        '{"number": {"did": "+7 495 111-00-01", "owner": "acme", "inbound_campaign": "line"}}\n'
        '{"number": {"did": "74950000001", "pool": "service", "region": "Moscow"}}\n'
    )
    assert read_file(jsonl, now=1.0) == read_file(toml, now=1.0)


@pytest.mark.parametrize("line, error", [
    ("not json", "line 2: not JSON"),
    ('{"tariff": {"id": "gold"}}', "line 2: 'tariff' is none of account"),
    ('{"number": {"did": "74951110001"}, "account": {"id": "x"}}', "line 2: one record per line"),
    ('{"number": {"did": "no number"}}', "line 2: did 'no number' is not a phone number"),
])
def test_a_bad_json_line_is_named_by_its_number(tmp_path, line, error):
    path = tmp_path / "inv.jsonl"
    path.write_text('{"account": {"id": "acme"}}\n' + line + "\n")
    with pytest.raises(InventoryError, match=error):
        read_file(path)


def test_a_large_toml_is_read_in_chunks_and_its_errors_keep_their_place(tmp_path):
    tables = [f'[[numbers]]\ndid = "7495{1000000 + i}"\n' for i in range(2500)]
    path = tmp_path / "inv.toml"
    path.write_text("".join(tables))
    inventory, _ = read_file(path)
    assert len(inventory.numbers) == 2500 and inventory.numbers[-1].did == "74951002499"
    tables[2100] = '[[numbers]]\ndid = "not a number"\n'
    path.write_text("".join(tables))
    with pytest.raises(InventoryError, match=r"numbers\[2100\]: did 'not a number'"):
        read_file(path)
    tables[2100] = "[[numbers]]\ndid = \n"  # not TOML, on line 4202 of the file
    path.write_text("".join(tables))
    with pytest.raises(InventoryError, match="at line 4202"):
        read_file(path)


def test_a_multi_line_string_is_never_cut_in_two(tmp_path):
    tables = [f'[[accounts]]\nid = "a{i}"\n' for i in range(1500)]
    tables[10] = '[[accounts]]\nid = "a10"\nname = """Two\n[[accounts]]\nlines"""\n'
    path = tmp_path / "inv.toml"
    path.write_text("".join(tables))
    inventory, _ = read_file(path)
    assert len(inventory.accounts) == 1500
    assert inventory.accounts[10].name == "Two\n[[accounts]]\nlines"


async def test_an_import_is_written_in_batches_and_again_writes_nothing(
    service, tmp_path, monkeypatch
):
    monkeypatch.setattr("zvonok_agi.numbers.service.IMPORT_BATCH", 2)
    path = tmp_path / "inv.jsonl"
    path.write_text('{"account": {"id": "acme", "verified": true}}\n' + "".join(
        f'{{"number": {{"did": "749511100{i:02d}", "owner": "acme"}}}}\n' for i in range(7)))
    inventory, overrides = read_file(path)
    await service.import_inventory("import", inventory, overrides)
    snapshot = await service.data.load()
    assert len(snapshot.numbers) == 7 and snapshot.numbers["74951110006"].owner == "acme"
    version = await service.data.version()
    await service.import_inventory("import", inventory, overrides)
    assert await service.data.version() == version  # nothing differed: nothing published
    assert [entry["detail"]["changed"] for entry in await service.audit_log("inventory")] == [
        0, 8]
