"""The batched runner: tasks' requests through a model adapter, every finished batch on disk before the
next starts, resumable, sharded across torchrun ranks, gathered and scored on rank 0."""
from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from omnibench import dist
from omnibench.cache import SampleCache, atomic_write_text
from omnibench.config import RunConfig, config_hash, scoped_args
from omnibench.manifest import build_manifest
from omnibench.protocol import Doc, ModelAdapter, OmnibenchError, Request, Task, chunks
from omnibench.registry import get_model_class, get_task_class

RESULTS_SCHEMA_VERSION = 1


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sample_seed(seed: int, sample_id: str) -> int:
    """Per-sample seed: the same image for a sample whatever its batch or rank, so resume is exact."""
    import hashlib
    return int.from_bytes(hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()[:4], "little")


def limit_docs(docs: list[Doc], limit: float | None) -> list[Doc]:
    if limit is None:
        return docs
    n = int(limit) if limit >= 1 else max(1, int(len(docs) * limit))
    return docs[:n]


def run_dir(cfg: RunConfig, chash: str) -> Path:
    return Path(cfg.output_path) / f"{cfg.model}_{chash}"


def _safe_name(sample_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id)


class Runner:
    """Evaluates one RunConfig. `model_factory` builds the adapter (the registry's class by default);
    it is called only if some sample still needs the model."""

    def __init__(self, cfg: RunConfig, model_factory: Callable[[], ModelAdapter] | None = None) -> None:
        self.cfg = cfg
        self.rank, self.world = dist.rank_world()
        self.chash = config_hash({"model": cfg.model, "dtype": cfg.dtype, **cfg.model_args}, cfg.seed)
        self.dir = run_dir(cfg, self.chash)
        self._factory = model_factory or (lambda: get_model_class(cfg.model)(
            device=dist.local_device(cfg.device), dtype=cfg.dtype, **cfg.model_args))
        self._model: ModelAdapter | None = None

    @property
    def model(self) -> ModelAdapter:
        if self._model is None:
            self._model = self._factory()
        return self._model

    def run(self) -> dict[str, Any] | None:
        cfg = self.cfg
        get_model_class(cfg.model)  # unknown model: fail before any data is read
        tasks = [get_task_class(name)(**scoped_args(name, cfg.task_args)) for name in cfg.tasks]
        dist.init(cfg.device)
        seed_everything(cfg.seed)
        results, counts, timing, fingerprints = {}, {}, {}, {}
        gathered: dict[str, list[dict[str, Any]]] = {}
        for task in tasks:
            task.run_dir = self.dir
            docs = limit_docs(list(task.docs()), cfg.limit)
            ids = [d.doc_id for d in docs]
            if len(set(ids)) != len(ids):
                raise OmnibenchError(f"task {task.name}: sample ids are not unique; the dataset has duplicate rows")
            cache = SampleCache(self.dir / "cache", self.chash, task.name, self.rank)
            timing[task.name] = self._generate(task, docs, cache)
            dist.barrier()
            fingerprints[task.name] = task.fingerprint()
            if self.rank != 0:
                continue
            finished = cache.load()
            missing = [i for i in ids if i not in finished]
            if missing:
                raise OmnibenchError(f"task {task.name}: {len(missing)} samples unfinished (first: {missing[0]}); "
                                     f"re-run the same command with --resume")
            ordered = [finished[i] for i in ids]
            gathered[task.name] = ordered
            results[task.name] = task.aggregate([r["record"] for r in ordered])
            counts[task.name] = {"total": len(ordered), "failed": sum(r["error"] is not None for r in ordered)}
        dist.barrier()
        if self.rank != 0:
            dist.finish()
            return None
        out = self._write(tasks, results, counts, timing, fingerprints, gathered)
        dist.finish()
        return out

    def _generate(self, task: Task, docs: list[Doc], cache: SampleCache) -> dict[str, float]:
        cfg = self.cfg
        if cfg.overwrite and self.rank == 0:
            for path in cache.files():
                path.unlink()
        dist.barrier()
        done = cache.load()
        if done and not cfg.resume:
            raise OmnibenchError(f"{len(done)} finished samples of {task.name} already in {cache.folder}: "
                                 f"pass --resume to continue that run or --overwrite to start over")
        mine = [d for i, d in enumerate(docs) if i % self.world == self.rank and d.doc_id not in done]
        index = {d.doc_id: i for i, d in enumerate(docs)}
        if mine:
            self.model  # load before the progress bar starts, so a load error prints alone
        start = time.perf_counter()
        with tqdm(total=len(mine), desc=task.name, unit="sample", disable=self.rank != 0 or not mine) as bar:
            for batch in chunks(mine, max(1, cfg.batch_size)):
                cache.append(self._run_batch(task, batch, index))
                bar.update(len(batch))
        seconds = time.perf_counter() - start
        return {"generated": len(mine), "seconds": round(seconds, 3),
                "samples_per_second": round(len(mine) / seconds, 3) if mine and seconds > 0 else None}

    def _run_batch(self, task: Task, batch: list[Doc], index: dict[str, int]) -> list[dict[str, Any]]:
        requests: list[tuple[Doc, Request]] = []
        records: dict[str, dict[str, Any]] = {}
        for doc in batch:
            try:
                req = task.build_request(doc)
                req.seed = sample_seed(self.cfg.seed, doc.doc_id)
                requests.append((doc, req))
            except Exception as exc:  # a corrupt image fails its sample, not the run
                reason = str(exc) if isinstance(exc, OmnibenchError) else f"{type(exc).__name__}: {exc}"
                records[doc.doc_id] = self._record(task, doc, index, None, None, reason)
        if task.output_type == "image":
            # An image on disk whose record was lost (killed between the two writes) is not redrawn.
            for doc, req in [(d, r) for d, r in requests if self._image_path(task, r.sample_id).exists()]:
                records[doc.doc_id] = self._record(task, doc, index, req.prompt, self._image_rel(task, doc.doc_id), None)
            requests = [(d, r) for d, r in requests if d.doc_id not in records]
        if requests:
            reqs = [r for _, r in requests]
            try:
                if task.output_type == "image":
                    outputs = [self._save_image(task, r.sample_id, img) for r, img in
                               zip(reqs, self.model.generate_images(reqs))]
                else:
                    outputs = self.model.generate_text(reqs)
            except Exception as exc:
                if "out of memory" not in str(exc).lower():
                    raise
                raise OmnibenchError(f"out of memory on a batch of {len(reqs)} {task.name} samples (first: "
                                     f"{reqs[0].sample_id}): finished samples are saved; re-run with a smaller "
                                     f"--batch_size and --resume") from exc
            if len(outputs) != len(reqs):
                raise OmnibenchError(f"model {self.cfg.model} returned {len(outputs)} outputs for {len(reqs)} requests")
            for (doc, req), output in zip(requests, outputs):
                records[doc.doc_id] = self._record(task, doc, index, req.prompt, output, None)
        return [records[d.doc_id] for d in batch]

    @staticmethod
    def _record(task: Task, doc: Doc, index: dict[str, int], prompt: str | None, output: Any,
                error: str | None) -> dict[str, Any]:
        return {"sample_id": doc.doc_id, "doc_index": index[doc.doc_id], "prompt": prompt, "output": output,
                "error": error, "record": task.process(doc, output)}

    def _image_rel(self, task: Task, sample_id: str) -> str:
        """Where a generated image lives, relative to the run folder (records stay valid if it moves)."""
        return f"images/{task.name}/{_safe_name(sample_id)}.png"

    def _image_path(self, task: Task, sample_id: str) -> Path:
        return self.dir / self._image_rel(task, sample_id)

    def _save_image(self, task: Task, sample_id: str, image) -> str:
        path = self._image_path(task, sample_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.png")
        image.save(tmp)
        tmp.replace(path)
        return self._image_rel(task, sample_id)

    def _write(self, tasks: list[Task], results: dict, counts: dict, timing: dict, fingerprints: dict,
               gathered: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        from omnibench.report import render_report

        cfg = self.cfg
        exports = {}
        for task in tasks:
            records = gathered[task.name]
            exports[task.name] = [str(p) for p in task.export([r["record"] for r in records], self.dir)]
            if cfg.log_samples:
                atomic_write_text(self.dir / f"samples_{task.name}.jsonl", "".join(
                    json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records))
        out = {
            "schema_version": RESULTS_SCHEMA_VERSION,
            "model": cfg.model,
            "config_hash": self.chash,
            "results": results,
            "headline": {t.name: {"table": t.paper_table, "column": t.paper_column,
                                     "metric": t.paper_metric, "scale": t.paper_scale}
                         for t in tasks},
            "n_samples": counts,
            "timing": timing,
            "exports": exports,
            "manifest": build_manifest(cfg.to_dict(), fingerprints, {"world_size": self.world}, argv=cfg.argv),
        }
        atomic_write_text(self.dir / "results.json", json.dumps(out, indent=2, sort_keys=True) + "\n")
        atomic_write_text(self.dir / "report.md", render_report(out))
        return out

