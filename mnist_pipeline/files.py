"""Crash- and concurrency-safe file writes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write`` on a unique temporary file beside ``path``, then rename it.

    Readers never see a half-written file, a crash leaves the old file (or none),
    and two processes writing the same path each publish a complete file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}.", suffix=f".partial{path.suffix}"
    )
    os.close(fd)
    partial = Path(name)
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def database_lock_file(database: Path) -> Path:
    """The lock file beside ``database`` that every process migrating it takes."""
    return Path(f"{database}.lock")


@contextlib.contextmanager
def database_lock(database: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<database>.lock`` for the ``with`` block.

    SQLite stores migrate their schema on first use; two processes doing so on
    one new file fail ("duplicate column name", "index … already exists"). Every
    process that creates or migrates the file does it under this lock. It is an
    advisory ``flock``: released when the block ends or the process dies.
    """
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database_lock_file(database), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def exclusive_lock(
    path: Path,
    timeout: float,
    poll: float = 0.2,
    on_wait: Callable[[], object] | None = None,
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the ``with`` block.

    Waits at most ``timeout`` seconds for another holder, calling ``on_wait``
    once if it has to wait. The kernel releases the lock when the holder's
    process dies, so a crash never leaves it taken.

    Raises:
        TimeoutError: another process held it for longer than ``timeout``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    waited = False
    with open(path, "w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if on_wait is not None and not waited:
                    on_wait()
                waited = True
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{path} stayed locked by another process for {timeout:g} s"
                    ) from None
                time.sleep(poll)
        yield


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite SQLAlchemy URL (any driver), else None.

    ``sqlite:///mlflow.db`` gives ``mlflow.db``; ``sqlite+aiosqlite:////h/p.db``
    gives ``/h/p.db``; in-memory databases, other backends and strings that are
    not SQLAlchemy URLs give None.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (
        None,
        "",
        ":memory:",
    ):
        return None
    return Path(parsed.database)
