"""Files that several runs may write at once (same data, same work folder)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def replace_atomically(path: Path) -> Iterator[BinaryIO]:
    """Write through a unique temporary file beside ``path``, then rename it.

    Readers see the old file or the complete new one, never a partial write, and
    concurrent writers (processes or threads) never share a temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with partial.open("xb") as file:
            yield file
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
