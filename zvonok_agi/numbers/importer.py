"""The inventory file (`zvonok-agi load FILE`), read for an import into the control plane.

Two formats, each read as a stream, so that memory holds the records and never the whole text:
- TOML (`*.toml`): `[[accounts]]`, `[[campaigns]]`, `[[numbers]]`, `[[attempts]]` tables as in
  config/demo-inventory.toml, parsed a thousand tables at a time;
- JSON Lines (`*.jsonl`): one record per line, named by its section in the singular:
  `{"number": {"did": "74951234567", "owner": "acme"}}`, the fields as in TOML.

The records are checked by `zvonok_agi.inventory` as they come, and the references between
them at the end; `NumbersService.import_inventory` then writes them in batches. A number may
carry `kind` and `region`, overriding what the numbering plan says. Past attempts are not
control-plane data: the caller records them into the callback history.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import orjson

from ..inventory import SECTIONS, Inventory, InventoryBuilder, InventoryError
from ..routing.model import Number
from . import rules
from .rules import Kind, Refused

CHUNK_TABLES = 1000  # TOML tables parsed at once
HEADER = re.compile(r"\s*\[\[")  # an array-of-tables header: where a chunk may end
LINE = re.compile(r"at line (\d+)")
ABSENT = object()  # a number's kind or region not given

Overrides = dict[str, tuple[Kind | None, str | None]]


def read_file(path: str | Path, now: float | None = None) -> tuple[Inventory, Overrides]:
    """The checked inventory and the kind/region overrides of its numbers."""
    path = Path(path)
    reader = _Reader(time.time() if now is None else now)
    try:
        with open(path, encoding="utf-8") as text:
            tables = _json_lines(text) if path.suffix in (".jsonl", ".ndjson") else _toml(text)
            for section, where, item in tables:
                reader.add(section, where, item)
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"cannot read {path}: {exc}") from exc
    return reader.finish()


class _Reader:
    def __init__(self, now: float) -> None:
        self.builder = InventoryBuilder(now)
        self.overrides: Overrides = {}
        self.hints: dict[tuple[Any, Any], tuple[Kind | None, str | None]] = {}  # checked
        self.seen_attempts: Counter[str] = Counter()

    def add(self, section: str, where: str, item: Any) -> None:
        if section == "attempts" and isinstance(item, dict) and "id" not in item:
            # The history keeps attempts by id: one made from the content resets an attempt
            # when the file is loaded again, instead of recording it twice.
            content = json.dumps(item, sort_keys=True, default=str)
            self.seen_attempts[content] += 1  # identical attempts stay distinct
            digest = hashlib.sha256(f"{content}#{self.seen_attempts[content]}".encode())
            item["id"] = f"load-{digest.hexdigest()[:20]}"
        record = self.builder.add(section, where, item)
        if isinstance(record, Number) and ("kind" in item or "region" in item):
            self._override(where, item, record.did)

    def _override(self, where: str, item: dict[str, Any], did: str) -> None:
        given = (item.get("kind", ABSENT), item.get("region", ABSENT))
        try:
            self.overrides[did] = self.hints[given]  # a few kinds and regions, many numbers
            return
        except (KeyError, TypeError):  # not yet seen, or not hashable (refused below)
            pass
        try:
            kind = rules.enum_value(Kind, given[0], "kind") if given[0] is not ABSENT else None
            region = (
                rules.text(given[1], "region", rules.MAX_REGION, required=True)
                if given[1] is not ABSENT
                else None
            )
        except Refused as exc:
            raise InventoryError(f"{where}: {exc.message}") from exc
        self.overrides[did] = self.hints[given] = (kind, region)

    def finish(self) -> tuple[Inventory, Overrides]:
        return self.builder.finish(), self.overrides


def _toml(text: TextIO) -> Iterator[tuple[str, str, Any]]:
    """(section, where, table) of a TOML inventory, CHUNK_TABLES tables parsed at a time.

    A chunk ends only before an array-of-tables header, which is where TOML starts a table
    anew; after a multi-line string (which could hold a line looking like a header) the rest
    is parsed in one piece."""
    counts: Counter[str] = Counter()
    chunk: list[str] = []
    first_line, tables, split = 1, 0, True
    for number, line in enumerate(text, 1):
        if HEADER.match(line):
            tables += 1
            if split and tables > CHUNK_TABLES:
                yield from _toml_chunk(chunk, first_line, counts)
                chunk, first_line, tables = [], number, 1
        if '"""' in line or "'''" in line:
            split = False
        chunk.append(line)
    yield from _toml_chunk(chunk, first_line, counts)


def _toml_chunk(lines: list[str], first_line: int, counts: Counter[str]):
    try:
        data = tomllib.loads("".join(lines))
    except tomllib.TOMLDecodeError as exc:
        where = LINE.sub(lambda m: f"at line {int(m[1]) + first_line - 1}", str(exc))
        raise InventoryError(f"not TOML: {where}") from exc
    for section, items in data.items():
        if section not in SECTIONS:
            raise InventoryError(f"unknown section: {section}")
        if not isinstance(items, list):
            raise InventoryError(f"{section} must be tables: [[{section}]]")
        for item in items:
            yield section, f"{section}[{counts[section]}]", item
            counts[section] += 1


def _json_lines(text: TextIO) -> Iterator[tuple[str, str, Any]]:
    for number, line in enumerate(text, 1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            record = orjson.loads(line)  # a third of json's time: large files are read here
        except ValueError as exc:
            raise InventoryError(f"{where}: not JSON: {exc}") from exc
        if not isinstance(record, dict) or len(record) != 1:
            raise InventoryError(f'{where}: one record per line, as {{"number": {{...}}}}')
        [(name, item)] = record.items()
        if f"{name}s" not in SECTIONS:
            raise InventoryError(f"{where}: {name!r} is none of account, number, campaign, attempt")
        yield f"{name}s", where, item
