"""The inventory TOML (`zvonok-agi load FILE`), read for an import into the control plane.

The file is read and checked by `zvonok_agi.inventory` as before; `NumbersService.
import_inventory` then upserts it into SQLite in one transaction and publishes it. A number may
carry `kind` and `region`, overriding what the numbering plan says. Past attempts are not
control-plane data: the caller records them into the callback history.
"""

from __future__ import annotations

import hashlib
import json
import time
import tomllib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import phone
from ..inventory import Inventory, InventoryError, parse_inventory
from . import rules
from .rules import Kind, Refused


def read_file(
    path: str | Path, now: float | None = None
) -> tuple[Inventory, dict[str, tuple[Kind | None, str | None]]]:
    """The checked inventory and the kind/region overrides of its numbers."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InventoryError(f"cannot read {path}: {exc}") from exc
    give_attempts_ids(data)
    inventory = parse_inventory(data, time.time() if now is None else now)
    return inventory, number_overrides(data)


def give_attempts_ids(data: Mapping[str, Any]) -> None:
    """Attempts without an `id` get one made from their content: the history keeps attempts by
    id, so loading the file again then resets them instead of recording them twice."""
    attempts = data.get("attempts")
    if not isinstance(attempts, list):
        return  # not a list of tables: parse_inventory says what is wrong
    seen: Counter[str] = Counter()
    for item in attempts:
        if isinstance(item, dict) and "id" not in item:
            content = json.dumps(item, sort_keys=True, default=str)
            seen[content] += 1  # identical attempts stay distinct
            digest = hashlib.sha256(f"{content}#{seen[content]}".encode()).hexdigest()
            item["id"] = f"load-{digest[:20]}"


def number_overrides(data: Mapping[str, Any]) -> dict[str, tuple[Kind | None, str | None]]:
    overrides = {}
    for i, item in enumerate(data.get("numbers", [])):
        if "kind" not in item and "region" not in item:
            continue
        did = phone.normalize(str(item.get("did", "")))
        try:
            kind = rules.enum_value(Kind, item["kind"], "kind") if "kind" in item else None
            region = rules.text(item["region"], "region", rules.MAX_REGION, required=True) \
                if "region" in item else None
        except Refused as exc:
            raise InventoryError(f"numbers[{i}]: {exc.message}") from exc
        if did is not None:
            overrides[did] = (kind, region)
    return overrides
