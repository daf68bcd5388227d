"""An inventory of a hosted dialer, for `zvonok-agi load`: accounts, campaigns, numbers.

    python bench/inventory_gen.py OUT.jsonl                 # 500,000 numbers, 50,000 accounts,
                                                            # 100,000 campaigns
    python bench/inventory_gen.py OUT.toml --numbers 50000 --accounts 2000

The shape: every account has an outbound campaign (dialing from the service pool) and an
inbound one; 90 % of the accounts are verified. 5 % of the numbers are the service pool, 80 %
are reserved by the verified accounts (spread evenly, each bound to its owner's inbound
campaign, callback rules mixed), the rest is unreserved stock. Numbers are Russian landlines
of six cities and mobiles, with their kind and region written out (as a carrier's export has
them; `--no-regions` leaves them to the numbering plan). The same arguments give the same file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

# (prefix, kind, region as the numbering plan names it)
RANGES = (
    ("7495", "landline", "Moscow"),
    ("7812", "landline", "St Petersburg"),
    ("7383", "landline", "Novosibirsk"),
    ("7343", "landline", "Ekaterinburg"),
    ("7843", "landline", "Republic of Tatarstan"),
    ("7831", "landline", "Nizhni Novgorod"),
    ("7916", "mobile", "Russia"),
    ("7926", "mobile", "Russia"),
)
RULES = ("as_campaign", "as_campaign", "force_yes", "force_no")
SERVICE_SHARE, RESERVED_SHARE = 0.05, 0.80


def account_id(a: int) -> str:
    return f"acct-{a}"


def verified(a: int) -> bool:
    return a % 10 != 9


def did(i: int) -> str:
    prefix = RANGES[i % len(RANGES)][0]
    return f"{prefix}{1_000_000 + i // len(RANGES):07d}"


def records(numbers: int, accounts: int, regions: bool = True) -> Iterator[tuple[str, dict]]:
    """(section, table) in the order a loader needs them: accounts, campaigns, numbers."""
    for a in range(accounts):
        yield "accounts", {"id": account_id(a), "name": f"Customer {a}", "verified": verified(a)}
    for a in range(accounts):
        yield (
            "campaigns",
            {
                "id": f"{account_id(a)}-out",
                "account": account_id(a),
                "kind": "outbound",
                "accept_inbound": a % 2 == 0,
            },
        )
        yield (
            "campaigns",
            {"id": f"{account_id(a)}-in", "account": account_id(a), "kind": "inbound"},
        )
    owners = [a for a in range(accounts) if verified(a)]
    service = int(numbers * SERVICE_SHARE)
    reserved = int(numbers * RESERVED_SHARE)
    for i in range(numbers):
        item: dict = {"did": did(i)}
        if i < service:
            item["pool"] = "service"
        else:
            item["pool"] = "reservable"
            n = i - service
            if n < reserved and owners:
                owner = account_id(owners[n % len(owners)])
                item.update(
                    owner=owner, inbound_campaign=f"{owner}-in", callback_rule=RULES[n % len(RULES)]
                )
        if regions:
            _, kind, region = RANGES[i % len(RANGES)]
            item.update(kind=kind, region=region)
        yield "numbers", item


def bound_numbers(numbers: int, accounts: int) -> Iterator[tuple[str, str]]:
    """(DID, owner) of every reserved number, as `records` makes them."""
    owners = [a for a in range(accounts) if verified(a)]
    service = int(numbers * SERVICE_SHARE)
    for n in range(min(int(numbers * RESERVED_SHARE), numbers - service)):
        yield did(service + n), account_id(owners[n % len(owners)])


def write(path: Path, numbers: int, accounts: int, regions: bool = True) -> None:
    with open(path, "w", encoding="utf-8") as out:
        if path.suffix == ".toml":
            for section, table in records(numbers, accounts, regions):
                out.write(f"[[{section}]]\n")
                for key, value in table.items():
                    out.write(f"{key} = {json.dumps(value)}\n")
                out.write("\n")
        else:  # JSON Lines: one {"<section minus s>": {...}} per line
            for section, table in records(numbers, accounts, regions):
                out.write(json.dumps({section[:-1]: table}, separators=(",", ":")) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="*.toml, or *.jsonl (JSON Lines)")
    p.add_argument("--numbers", type=int, default=500_000)
    p.add_argument("--accounts", type=int, default=50_000, help="two campaigns each")
    p.add_argument(
        "--no-regions", action="store_true", help="leave kind and region to the numbering plan"
    )
    args = p.parse_args(argv)
    write(args.out, args.numbers, args.accounts, not args.no_regions)
    print(
        f"{args.out}: {args.accounts} accounts, {2 * args.accounts} campaigns, "
        f"{args.numbers} numbers",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
