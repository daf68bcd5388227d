"""A real PostgreSQL server for the tests (and bench/store_bench.py): a private cluster in a
temporary folder, started with the binaries of Debian's `postgresql` package (initdb, pg_ctl),
listening on a free loopback port with trust authentication, and removed at the end.

PostgreSQL refuses to run as root: as root (CI), the cluster belongs to the `postgres` user the
package creates (else `nobody`) and its commands run as that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import asyncpg

USER = "zvonok"


def binaries() -> Path | None:
    """The folder of initdb and pg_ctl, the newest version installed; None if there is none."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(Path(path).parts[-3])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class PostgresServer:
    def __init__(self, bin_dir: Path, port: int, *, durable: bool = False) -> None:
        self.bin_dir = bin_dir
        self.port = port
        self.durable = durable  # commits reach the disk (a benchmark), or not (the tests)
        self.owner = _owner()
        self.folder = Path(tempfile.mkdtemp(prefix="zvonok-pg-"))
        self.data = self.folder / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        if self.owner is not None:
            os.chown(self.folder, self.owner.pw_uid, self.owner.pw_gid)
        self._run(
            "initdb",
            "-D",
            self.data,
            "-U",
            USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        options += " -c max_connections=200"
        if not self.durable:  # a throwaway cluster: nothing needs to survive a crash
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            "pg_ctl", "-D", self.data, "-l", self.folder / "log", "-o", options, "-w", "start"
        )

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def log(self) -> str:
        path = self.folder / "log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def _run(self, command: str, *args: object) -> None:
        as_user = {}
        if self.owner is not None:
            as_user = dict(user=self.owner.pw_uid, group=self.owner.pw_gid, extra_groups=[])
        done = subprocess.run(
            [str(self.bin_dir / command), *map(str, args)],
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=120,
            **as_user,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{command} failed: {done.stderr or done.stdout}\n{self.log()}")


async def sql(url: str, statement: str) -> None:
    """Runs one statement on the server `url` names, in a connection of its own."""
    db = await asyncpg.connect(url)
    try:
        await db.execute(statement)
    finally:
        await db.close()


def _owner() -> pwd.struct_passwd | None:
    """Who runs the server: this user, unless it is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root with neither a postgres nor a nobody user")
