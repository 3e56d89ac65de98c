"""DIR/trials.jsonl: one line per finished trial, appended and flushed to disk as each ends, so
Ctrl-C or a crash keeps every finished trial and a re-run skips them (same settings key)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optimize.errors import BundleError, InputError

TRIALS_FILE = "trials.jsonl"


class TrialStore:
    """The finished trials of one search. ``context`` is what makes trials comparable (model, goal,
    timing shape and threads, export flags): a folder holding another search's trials is refused
    rather than mixed with this one."""

    def __init__(self, folder: Path, context: Mapping[str, Any]) -> None:
        self.folder = folder
        self.path = folder / TRIALS_FILE
        self.context = dict(context)
        self.records: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise BundleError(f"cannot read {self.path}: {exc.strerror or exc}", "check the folder's permissions") from exc
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # a line cut by a crash mid-write: that trial is simply redone
                    continue
                raise InputError(f"{self.path} line {number} is not JSON", "fix or remove that line, or pass another --output") from None
            if record.get("context") != self.context:
                raise InputError(
                    f"{self.folder} holds trials of another search (line {number}: {_difference(record.get('context') or {}, self.context)})",
                    "pass another --output, or the same model, goal and timing flags as before",
                )
            self.records[record["key"]] = record

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append one finished trial durably (flushed and fsynced before the next one is chosen)."""
        line = {**record, "context": self.context}
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise BundleError(f"cannot append to {self.path}: {exc.strerror or exc}", "free disk space or pass another --output") from exc
        self.records[record["key"]] = line
        return line


def _difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k} was {old.get(k)!r}, now {new.get(k)!r}" for k in keys[:3]) or "different settings"
