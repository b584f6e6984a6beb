"""Atomic writes: every file this toolkit writes goes through here, so that a crash, a kill or a full
disk leaves either the previous file or the new one, never half of one.

The data goes to a temporary file beside the target (same file system), is flushed to disk and
renamed over the target. A failure removes the temporary file and raises ``OSError`` naming the
target, saying whether its previous version is intact.

>>> import tempfile
>>> from pathlib import Path
>>> d = Path(tempfile.mkdtemp())
>>> write_text_atomic(d / "a.txt", "one\\n")
>>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
('one\\n', ['a.txt'])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "write_atomic",
    "write_bytes_atomic",
    "write_text_atomic",
    "torch_save_atomic",
    "write_cuts_atomic",
]


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a binary file that becomes ``path`` only once it is complete.

    The temporary file's name is fixed (``.NAME.tmp``), so the rerun of a killed process takes it
    over instead of leaving it behind; it is opened like any file, with 0666 less the umask.
    """
    path = Path(path)
    with _replacing(path, path.with_name(f".{path.name}.tmp")) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` as UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


def torch_save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` of ``obj`` to ``path``."""
    import torch

    write_atomic(path, lambda f: torch.save(obj, f))


def write_cuts_atomic(cuts, path: Path) -> None:
    """``CutSet.to_file``: the temporary file keeps the name's ending, from which lhotse takes the format."""
    path = Path(path)
    with _replacing(path, path.with_name(f".tmp-{path.name}")) as tmp:
        cuts.to_file(tmp)


@contextmanager
def _replacing(path: Path, tmp: Path) -> Iterator[Path]:
    """Yield ``tmp`` to be written, then rename it over ``path``; on failure remove it and, for an
    ``OSError`` (a full disk, a read-only directory), say which file and whether the old one is kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        kept = "; the previous one is intact" if path.exists() else ""
        raise OSError(exc.errno, f"{path}: cannot write it ({exc.strerror or exc}){kept}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
