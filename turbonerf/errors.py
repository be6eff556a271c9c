"""User-facing errors: one line that names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class TurboNerfError(Exception):
    """An error caused by user input (a file, a flag, a checkpoint).

    The CLI prints ``str(err)`` on one line and exits non-zero, without a traceback.
    """

    def __init__(self, problem: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
