"""Append-only per-sample cache: one JSON line per finished sample, fsync'd after every batch, so a run
killed at any point loses at most the batch in flight and resumes from the rest."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable

from omnibench.protocol import OmnibenchError

log = logging.getLogger("omnibench")


class SampleCache:
    """JSONL records keyed by (config hash, task, sample id). Each process appends to its own file
    (`<task>.rank<r>.jsonl`); reads merge every file of the task, so resuming under a different
    number of processes still finds all finished samples. A sample written again (recomputed after its
    request or code changed) is read as its newest record (`written_ns`)."""

    def __init__(self, folder: Path, config_hash: str, task: str, rank: int = 0) -> None:
        self.folder = Path(folder)
        self.config_hash = config_hash
        self.task = task
        self.path = self.folder / f"{task}.rank{rank}.jsonl"

    def files(self) -> list[Path]:
        return sorted(self.folder.glob(f"{self.task}.rank*.jsonl"))

    def load(self) -> dict[str, dict[str, Any]]:
        """Finished records by sample id. A torn line (a process killed mid-write) is skipped; a line
        that parses but is not this run's record (another configuration's, or not a record at all)
        is a one-line error: the folder was copied or edited, and its answers must not be scored."""
        done: dict[str, dict[str, Any]] = {}
        torn = 0
        for path in self.files():
            with open(path, encoding="utf-8", errors="replace") as fh:
                for lineno, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        torn += 1
                        continue
                    where = f"{path}:{lineno}"
                    if not isinstance(rec, dict) or not isinstance(rec.get("sample_id"), str) \
                            or "output" not in rec or "record" not in rec:
                        raise OmnibenchError(f"corrupt cache line {where}: not a sample record; delete that "
                                             f"file (its samples are re-run) or start over with --overwrite")
                    if rec.get("config_hash") != self.config_hash or rec.get("task") != self.task:
                        raise OmnibenchError(
                            f"foreign cache line {where}: a sample of config {rec.get('config_hash')} task "
                            f"{rec.get('task')}, in the folder of config {self.config_hash} task {self.task}; "
                            f"the folder was copied or edited: use another --output_path or --overwrite")
                    old = done.get(rec["sample_id"])
                    if old is None or rec.get("written_ns", 0) >= old.get("written_ns", 0):
                        done[rec["sample_id"]] = rec
        if torn:
            log.warning(f"{self.task}: skipped {torn} torn cache line(s) (a run killed mid-write); "
                        f"those samples are re-run")
        return done

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        now = time.time_ns()
        lines = "".join(json.dumps({"config_hash": self.config_hash, "task": self.task, "written_ns": now, **r},
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
    """`path` holds the old text or the new, never a mix; concurrent writers never share a temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
