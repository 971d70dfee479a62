"""Append-only per-sample cache: one JSON line per finished sample, fsync'd after every batch, so a run
killed at any point loses at most the batch in flight and resumes from the rest."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable


class SampleCache:
    """JSONL records keyed by (config hash, task, sample id). Each process appends to its own file
    (`<task>.rank<r>.jsonl`); reads merge every file of the task, so resuming under a different
    number of processes still finds all finished samples."""

    def __init__(self, folder: Path, config_hash: str, task: str, rank: int = 0) -> None:
        self.folder = Path(folder)
        self.config_hash = config_hash
        self.task = task
        self.path = self.folder / f"{task}.rank{rank}.jsonl"

    def files(self) -> list[Path]:
        return sorted(self.folder.glob(f"{self.task}.rank*.jsonl"))

    def load(self) -> dict[str, dict[str, Any]]:
        """Finished records by sample id. A torn last line (killed mid-write) is ignored."""
        done: dict[str, dict[str, Any]] = {}
        for path in self.files():
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if rec.get("config_hash") == self.config_hash and rec.get("task") == self.task:
                        done[rec["sample_id"]] = rec
        return done

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        lines = "".join(json.dumps({"config_hash": self.config_hash, "task": self.task, **r},
                                   ensure_ascii=False, sort_keys=True) + "\n" for r in records)
        if not lines:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            # A previous run killed mid-line left a torn tail: start on a fresh line so it stays isolated.
            if fh.tell() > 0 and not _ends_with_newline(self.path):
                fh.write("\n")
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
