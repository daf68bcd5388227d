"""A control-plane writer for the kill -9 test: changes in a loop, each reported once it is
acknowledged (the service returned) or failed (the service raised).

    python outbox_writer.py STORE_URL REDIS_URL PREFIX WRITER WRITERS FIRST

Writer W owns account wW, its campaigns wW-in-a, wW-in-b, wW-out and the numbers `did(W, 0)`
and `did(W, 1)`. Change K (counting from FIRST) is, by K mod 4: the account's name set to
"wW-K"; number 0 bound to the other inbound campaign, with a new rule; the outbound campaign
paused or resumed; number 1 bound to the next writer's campaign (refused: not the owner).
Prints `ok K`, `refused K` or `failed K`, one line each, until killed.
"""

from __future__ import annotations

import asyncio
import sys

from redis.asyncio import Redis

from zvonok_agi.numbers.rules import Refused
from zvonok_agi.numbers.service import NumbersService
from zvonok_agi.numbers.store import Store
from zvonok_agi.store.routing_data import RoutingData

RULES = ("force_yes", "as_campaign", "force_no")


def did(writer: int, n: int) -> str:
    return f"7495300{writer:02d}{n:02d}"


async def change(service: NumbersService, w: int, writers: int, k: int) -> None:
    turn = k // 4 % 2
    if k % 4 == 0:
        await service.update_account("writer", f"w{w}", name=f"w{w}-{k}")
    elif k % 4 == 1:
        await service.change_number(
            "writer",
            did(w, 0),
            inbound_campaign=f"w{w}-in-{'ab'[turn]}",
            callback_rule=RULES[k % 3],
        )
    elif k % 4 == 2:
        await service.update_campaign("writer", f"w{w}-out", state=("paused", "running")[turn])
    else:
        await service.change_number(
            "writer", did(w, 1), inbound_campaign=f"w{(w + 1) % writers}-in-a"
        )


async def main(db: str, url: str, prefix: str, w: int, writers: int, first: int) -> None:
    redis = Redis.from_url(url, socket_timeout=5)
    store = await Store.open(db)
    service = NumbersService(store, RoutingData(redis, prefix))
    k = first
    while True:
        try:
            await change(service, w, writers, k)
            outcome = "ok"
        except Refused:
            outcome = "refused"
        except Exception:  # the store busy past its timeout: this change failed, go on
            outcome = "failed"
        sys.stdout.write(f"{outcome} {k}\n")
        sys.stdout.flush()
        k += 1


if __name__ == "__main__":
    db, url, prefix, *numbers = sys.argv[1:]
    asyncio.run(main(db, url, prefix, *map(int, numbers)))
