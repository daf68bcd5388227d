"""A store copy that kills itself (SIGKILL) midway, for the test of an interrupted copy: once
the first batch of rows of TABLE is written to the target, inside the copy's transaction.

    python copy_killer.py SOURCE TARGET TABLE
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from zvonok_agi.numbers.copying import copy_store


def main(source: str, target: str, table: str) -> None:
    def progress(copying: str, copied: int) -> None:
        if copying == table:
            os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(copy_store(source, target, batch=2, progress=progress))
    sys.exit("the copy ended before it reached " + table)


if __name__ == "__main__":
    main(*sys.argv[1:])
