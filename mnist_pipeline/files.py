"""Crash- and concurrency-safe file writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
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
