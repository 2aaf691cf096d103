"""Files written whole or not at all, never through a link (the results folder's writes).

A file is written to a new temporary file beside it, created exclusively
(``O_EXCL``: never an existing file or a link planted there), named
``<name>.<host>-<pid>-<random>.tmp``, then renamed over the final name
(``os.replace`` is atomic on POSIX and replaces a link rather than following it).
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Any


def tmp_tag() -> str:
    """Unique per process and call: two writers never share a temporary file."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def tmp_path(final: Path) -> Path:
    """A new, empty temporary file beside ``final``, created exclusively (never an
    existing file, never through a link): ``<name>.<host>-<pid>-<random>.tmp``."""
    for _ in range(100):
        tmp = final.with_name(f"{final.name}.{tmp_tag()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(final)  # pragma: no cover - 100 random names taken


_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def atomic_write_bytes(
    path: Path, blob: bytes | memoryview, sync: bool = False, before_rename: Any = None
) -> None:
    """Write ``path`` whole or not at all: a unique temporary file, then ``os.replace``
    (which replaces a link at ``path`` rather than writing through it).

    Args:
        sync: ``fsync`` the file before renaming it (a chunk: it survives a crash).
        before_rename: called with the temporary path just before the rename (a test hook).
    """
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(blob)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        if before_rename is not None:
            before_rename(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
