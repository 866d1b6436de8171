"""The result file of a validation script: lines printed as they come, written at the end.

``out = Report(path)``; ``out("a line")`` prints it (flushed, so a long run shows progress)
and keeps it; ``out.write()`` writes every line to ``path`` through a temporary file, so an
interrupted run never leaves a partial result file in validation/results.
"""
from __future__ import annotations

from pathlib import Path


class Report:
    def __init__(self, path):
        self.path = Path(path)
        self.lines: list[str] = []

    def __call__(self, s=""):
        print(s, flush=True)
        self.lines.append(s)

    def write(self):
        from cutem.io import atomic_path

        with atomic_path(self.path, suffix=".txt") as tmp:
            tmp.write_text("\n".join(self.lines) + "\n")
