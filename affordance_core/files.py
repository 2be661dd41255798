"""Atomic file and folder writes: readers see the old version or the new one, never a part."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write"]


@contextmanager
def atomic_write(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on a clean exit it replaces ``path``.

    Write the new content to the yielded path (``torch.save(obj, tmp)``,
    ``tmp.write_text(...)``, a memory map, or files inside it when ``directory`` is true).
    A file is flushed to disk before the rename. On an exception the temporary path is
    removed and ``path`` keeps its previous content.

    Args:
        path: final file or folder; its parent folder is created.
        directory: the yielded path is an (empty) folder instead of a file name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private (0700)
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory:
            if path.exists():
                shutil.rmtree(path)
        else:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise
