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
