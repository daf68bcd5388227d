"""The admin API's token when none is configured: generated once, kept in a file only its
owner may read, and reused at every start, so a bookmarked page keeps working and the token
never has to go through a log."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path


class TokenFileError(ValueError):
    pass


def stored_token(path: Path) -> str:
    """The token kept at `path`; a new one (written with mode 0600) when there is none."""
    token = _read(path)
    if token:
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # empty: left by a start that stopped before writing
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it meanwhile: use theirs
        return _read(path)
    except OSError as exc:
        raise TokenFileError(f"cannot write the admin token file {path}: {exc}") from exc
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(token + "\n")
    return token


def _read(path: Path) -> str:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise TokenFileError(
                f"the admin token file {path} is open to other users (mode {mode:o}): "
                f"chmod 600 {path}, or delete it to get a new token"
            )
        return path.read_text("utf-8").strip()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"cannot read the admin token file {path}: {exc}") from exc
