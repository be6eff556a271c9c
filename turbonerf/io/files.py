"""Files written so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import os
from pathlib import Path

from turbonerf.errors import TurboNerfError


def is_inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies inside it (after resolving links and ``..``)."""
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


def temp_path(path: Path) -> Path:
    """The hidden temporary name ``path`` is first written under (same folder, so the rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise TurboNerfError(f"cannot write ({e.strerror or e})", path) from None
