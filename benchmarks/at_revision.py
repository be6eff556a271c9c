"""Import a module of the package as it was at a git revision (for A/B benchmarks that alternate
an old kernel and this checkout's in one process)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def module_at(rev: str, repo_path: str, folder: Path, name: str, file: Path | None = None):
    """The module at ``repo_path`` (e.g. ``turbonerf/bake/march_cpu.py``) of git revision ``rev``
    (or the copy of it in ``file``), imported as ``name`` from a copy written into ``folder``."""
    if file is not None:
        src = file.read_text()
    else:
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{repo_path}"], check=True, capture_output=True, text=True).stdout
    path = folder / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod
