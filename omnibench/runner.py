"""The batched runner: tasks' requests through a model adapter, resumable, sharded across torchrun ranks,
gathered and scored on rank 0.

Requests are batched by length (each batch the shortest of a pool of a few batches, so a batch pads
little). One model call is in flight at a time, on a worker thread (the first on the main thread:
omnibench.pipeline.OneAhead), while the main thread builds the next batch (reading rows, decoding images)
and does its host-side preparation (`ModelAdapter.prepare_text`: resize, normalise, tokenize): the device
does not wait for the host between batches. Every finished batch is on disk before the next model call
starts, so a crash loses at most the batch in flight."""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import random
import re
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from omnibench import dist, identity, lmms_results, registry
from omnibench.cache import SampleCache, atomic_write_text
from omnibench.config import RunConfig, check_writable_dir, config_hash, task_args_for
from omnibench.errors import free_accelerator_memory, is_out_of_memory
from omnibench.manifest import build_manifest
from omnibench.pipeline import OneAhead
from omnibench.prep import HostPrep, default_workers
from omnibench.protocol import Doc, Docs, ModelAdapter, OmnibenchError, Request, Task

log = logging.getLogger("omnibench")
# Cache bookkeeping that the samples file leaves out (it differs between two runs of the same samples).
CACHE_ONLY = ("written_ns",)

RESULTS_SCHEMA_VERSION = 1
# `--batch_size auto` starts here and halves on out-of-memory. Batches of understanding requests past
# 64 gain little on one GPU, and a cap keeps the first, failing attempts short.
AUTO_BATCH_CAP = 64
# Requests wait in a pool of this many batches; each batch sent is the pool's shortest (by image count,
# then prompt length), so a batch pads little. The pool is emptied, sorted, at the end of a task.
SORT_WINDOW = 4


def length_key(item: tuple[int, Doc, Request, str]) -> tuple[int, int]:
    req = item[2]
    return len(req.images), len(req.prompt)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str:
    """'key: old -> new' for each leaf that differs between two nested dicts."""
    out = []
    for key in sorted(set(a) | set(b), key=str):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            inner = _differences(x, y, f"{prefix}{key}.")
            out += [inner] if inner else []
        elif x != y:
            out.append(f"{prefix}{key}: {x!r} -> {y!r}")
    return "; ".join(out)


def sample_seed(seed: int, sample_id: str) -> int:
    """Per-sample seed: the same image for a sample whatever its batch or rank, so resume is exact."""
    import hashlib
    return int.from_bytes(hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()[:4], "little")


def limit_count(total: int, limit: float | None) -> int:
    """How many of a task's `total` docs `--limit` keeps (the first ones)."""
    if limit is None:
        return total
    return min(total, int(limit) if limit >= 1 else max(1, int(total * limit)))


def run_dir(cfg: RunConfig, chash: str) -> Path:
    return Path(cfg.output_path) / f"{cfg.model}_{chash}"


def _safe_name(sample_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id)


@dataclass
class PassStats:
    """What one rank's pass over its share of a task did, and why it recomputed what it did."""

    cached: int = 0
    generated: int = 0
    rescored: int = 0
    failed: int = 0
    why: Counter = field(default_factory=Counter)

    def line(self, task: str) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in self.why.most_common())
        return (f"{task}: {self.cached} cached, {self.generated} generated, {self.rescored} re-scored, "
                f"{self.failed} failed to load" + (f" (recomputed: {reasons})" if reasons else ""))


class Runner:
    """Evaluates one RunConfig. `model_factory` builds the adapter (the registry's class by default);
    it is called only if some sample still needs the model."""

    def __init__(self, cfg: RunConfig, model_factory: Callable[[], ModelAdapter] | None = None) -> None:
        self.cfg = cfg
        self.rank, self.world = dist.rank_world()
        self.model_cls = registry.get_model_class(cfg.model)
        # The run's identity: the adapter's declared arguments with every default filled in, so a
        # misspelled key fails here and a default changed in code gives a new run folder.
        self.model_config = self.model_cls.resolved_config(cfg.dtype, cfg.model_args)
        # The device kind changes answers too (kernels, and `--dtype auto` may mean bf16 on CUDA only).
        self.model_config["device_type"] = cfg.device.partition(":")[0]
        local = identity.local_file_digests(self.model_config)
        if local:  # the content behind local checkpoint paths, not just the paths
            self.model_config["local_file_digests"] = local
        self.chash = config_hash(self.model_config, cfg.seed)
        self.model_code = identity.model_code_version(self.model_cls)
        self.dir = run_dir(cfg, self.chash)
        self._factory = model_factory or (lambda: self.model_cls(
            device=dist.local_device(cfg.device), dtype=cfg.dtype, **cfg.model_args))
        self._model: ModelAdapter | None = None
        self._replaced: Path | None = None
        # Samples per model call; with --batch_size auto, halved for the rest of the run on out-of-memory.
        # It is in no sample's identity: a request's answer does not depend on the batch it was in.
        self.ahead = OneAhead()
        self.prep_workers = cfg.prep_workers if cfg.prep_workers is not None else default_workers(cfg.device)
        self._prep: HostPrep | None = None
        self._writers: ThreadPoolExecutor | None = None  # write a batch's generated images (_save_images)
        self.auto_batch = cfg.batch_size == "auto"
        self.batch_size = AUTO_BATCH_CAP if self.auto_batch else int(cfg.batch_size)
        self._batch_logged = False

    @property
    def model(self) -> ModelAdapter:
        if self._model is None:
            self._model = self._factory()
        return self._model

    def run(self) -> dict[str, Any] | None:
        cfg = self.cfg
        tasks = [registry.get_task_class(name)(**args) for name, args in task_args_for(cfg.tasks, cfg.task_args).items()]
        dist.init(cfg.device)
        seed_everything(cfg.seed)
        self._claim_folder()
        results, counts, timing, fingerprints, totals = {}, {}, {}, {}, {}
        gathered: dict[str, list[dict[str, Any]]] = {}
        for task in tasks:
            task.run_dir = self.dir
            docs = task.docs()
            totals[task.name] = len(docs)
            n = limit_count(len(docs), cfg.limit)
            ids = docs.ids[:n]
            if len(set(ids)) != len(ids):
                raise OmnibenchError(f"task {task.name}: sample ids are not unique; the dataset has duplicate rows")
            cache = SampleCache(self.dir / "cache", self.chash, task.name, self.rank)
            try:
                timing[task.name] = self._generate(task, docs, n, cache)
            finally:
                if self._prep is not None:  # the workers go with the task's last batch
                    self._prep.close()
                    self._prep = None
                if self._writers is not None:
                    self._writers.shutdown()
                    self._writers = None
            dist.barrier()
            self._drop_replaced()
            fingerprints[task.name] = task.fingerprint()
            if self.rank != 0:
                continue
            finished = cache.load()
            missing = [i for i in ids if i not in finished]
            if missing:
                raise OmnibenchError(f"task {task.name}: {len(missing)} samples unfinished (first: {missing[0]}); "
                                     f"re-run the same command with --resume")
            ordered = [{k: v for k, v in finished[i].items() if k not in CACHE_ONLY} for i in ids]
            gathered[task.name] = ordered
            results[task.name] = task.aggregate([r["record"] for r in ordered])
            counts[task.name] = {"total": len(ordered), "failed": sum(r["error"] is not None for r in ordered),
                                 "available": totals[task.name]}
        dist.barrier()
        if self.rank != 0:
            dist.finish()
            return None
        out = self._write(tasks, results, counts, timing, fingerprints, gathered)
        dist.finish()
        return out

    def _claim_folder(self) -> None:
        """Rank 0 checks that the run folder is this configuration's (its `run.json`), or, with
        --overwrite, moves the old run aside once this run's model has loaded (so a run that cannot
        start leaves the old one intact); the old one is deleted when this one has produced a task."""
        cfg = self.cfg
        if cfg.overwrite and self.dir.exists():
            self.model  # every rank loads first: a failure here must leave the old run untouched
            dist.barrier()
            if self.rank == 0:
                self._replaced = self.dir.with_name(f"{self.dir.name}.replaced")
                shutil.rmtree(self._replaced, ignore_errors=True)
                self.dir.rename(self._replaced)
        if self.rank == 0:
            check_writable_dir(str(self.dir), "--output_path")
            theirs = self._recorded_identity()
            if theirs is not None and (theirs.get("config_hash") != self.chash or theirs.get("model_config")
                                       != self.model_config or theirs.get("seed") != cfg.seed):
                mine = {k: self._identity()[k] for k in ("model_config", "seed")}
                raise OmnibenchError(f"{self.dir} holds a run of another configuration (differs in: "
                                     f"{_differences({k: theirs.get(k) for k in mine}, mine)}); it was copied or "
                                     f"renamed: use another --output_path or --overwrite")
        dist.barrier()

    def _identity(self) -> dict[str, Any]:
        return {"config_hash": self.chash, "model_config": self.model_config, "seed": self.cfg.seed}

    def _recorded_identity(self) -> dict[str, Any] | None:
        path = self.dir / "run.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise OmnibenchError(f"unreadable {path} ({exc}): the run folder is damaged; use another "
                                 f"--output_path or --overwrite") from None

    def _drop_replaced(self) -> None:
        if self._replaced is not None and self.rank == 0:
            shutil.rmtree(self._replaced, ignore_errors=True)
            self._replaced = None

    def _generate(self, task: Task, docs: Docs, n: int, cache: SampleCache) -> dict[str, Any]:
        """This rank's share of the first `n` docs: each sample whose cached record was made from the
        same request by the same model code is kept (re-scored if the task's code or arguments changed);
        the others are generated in batches, each batch on disk before the next starts."""
        cfg = self.cfg
        done = cache.load()
        if done and not cfg.resume:
            raise OmnibenchError(f"{len(done)} finished samples of {task.name} already in {cache.folder}: "
                                 f"pass --resume to continue that run or --overwrite to start over")
        scoring = identity.scoring_version(task)
        stats = PassStats()
        ready: list[dict[str, Any]] = []
        pending: list[tuple[int, Doc, Request, str]] = []
        mine = range(self.rank, n, self.world)
        if any(docs.ids[i] not in done for i in mine):
            self.model  # load before the progress bar starts, so a load error prints alone
        start = time.perf_counter()
        with tqdm(total=len(mine), desc=task.name, unit="sample", disable=self.rank != 0 or not mine) as bar, \
                self._finishing(cache, bar):
            for i in mine:
                doc = docs[i]
                old = done.get(doc.doc_id)
                try:
                    req = task.build_request(doc)
                except Exception as exc:  # a corrupt image fails its sample, not the run
                    reason = str(exc) if isinstance(exc, OmnibenchError) else f"{type(exc).__name__}: {exc}"
                    if old is not None and old["error"] == reason and old.get("scoring") == scoring:
                        stats.cached += 1
                    else:
                        ready.append(self._record(task, doc, i, None, None, reason, None, scoring))
                    stats.failed += 1
                    bar.update(1)
                else:
                    req.seed = sample_seed(cfg.seed, doc.doc_id)
                    req.gen_kwargs.update(cfg.gen_kwargs)  # --gen_kwargs: part of the request's fingerprint
                    sha = identity.request_fingerprint(req)
                    why = self._stale(task, old, sha) if old is not None else "new"
                    if why is None:
                        if old.get("scoring") == scoring:
                            stats.cached += 1
                        else:  # same answer, scored by changed task code or arguments
                            ready.append({**old, "record": task.process(doc, old["output"]), "scoring": scoring})
                            stats.rescored += 1
                        bar.update(1)
                    else:
                        if why != "new":
                            stats.why[why] += 1
                        pending.append((i, doc, req, sha))
                if len(pending) >= self.batch_size * SORT_WINDOW:  # the pool's shortest batch goes, with what is ready
                    pending.sort(key=length_key)
                    batch, pending = pending[:self.batch_size], pending[self.batch_size:]
                    self._flush(task, batch, ready, cache, scoring, bar)
                    stats.generated += len(batch)
                    ready = []
                elif len(ready) >= self.batch_size:  # records that need no model: saved, the batch keeps filling
                    self._flush(task, [], ready, cache, scoring, bar)
                    ready = []
            pending.sort(key=length_key)
            for start in range(0, max(len(pending), 1), self.batch_size):  # each batch on disk as it finishes
                batch = pending[start:start + self.batch_size]
                self._flush(task, batch, ready, cache, scoring, bar)
                stats.generated += len(batch)
                ready = []
            self._save_finished(self.ahead.swap(None), cache, bar)
        seconds = time.perf_counter() - start
        if mine:
            log.info(("" if self.world == 1 else f"[rank {self.rank}] ") + stats.line(task.name))
        return {"generated": stats.generated, "cached": stats.cached, "rescored": stats.rescored,
                "recomputed": dict(stats.why), "seconds": round(seconds, 3),
                "samples_per_second": round(stats.generated / seconds, 3) if stats.generated and seconds > 0 else None}

    def _stale(self, task: Task, old: dict[str, Any], request_sha: str) -> str | None:
        """Why a cached sample cannot be reused for this request, or None if it can."""
        if old.get("error") is not None:
            return "failed before"
        if old.get("request") != request_sha:
            return "request changed (prompt, image, generation settings or seed)"
        if old.get("model_code") != self.model_code:
            return "model code or library version changed"
        if task.output_type == "image":
            path = self.dir / str(old["output"])
            if not path.is_file() or identity.file_sha256(path) != old.get("image_sha256"):
                return "image missing or changed on disk"
        return None

    def _flush(self, task: Task, pending: list[tuple[int, Doc, Request, str]], ready: list[dict[str, Any]],
               cache: SampleCache, scoring: str, bar: tqdm) -> None:
        """Records that need no model call go to disk now; a batch of requests is prepared here (host
        side, while the worker runs the batch before), then that batch is written and this one sent."""
        self._save(ready, cache)
        if pending:
            reqs = [req for _, _, req, _ in pending]
            items = reqs if task.output_type == "image" else self._prepared(reqs)
            run = lambda: self._run_batch(task, pending, items, scoring)  # noqa: E731
            if task.output_type == "image":
                # This batch starts as soon as the model is free; the batch before's images are written
                # meanwhile (tens of ms of PNG encoding a batch), then its records, each saved only once its
                # image is on disk: a crash in between leaves images without records, which a resumed run
                # draws again (`_stale`).
                self._save_finished(self.ahead.swap(run, len(pending)), cache, bar)
            else:
                # The batch in flight is on disk before this one starts (a few ms of fsync between two calls).
                self._save_finished(self.ahead.swap(None), cache, bar)
                self.ahead.swap(run, len(pending))

    def _prepared(self, reqs: list[Request]) -> list[Any]:
        """The adapter's host-side preparation of a batch, in `prep_workers` processes (omnibench.prep)."""
        if self._prep is None:
            self._prep = HostPrep(self.model, self.prep_workers)
        return self._prep(reqs)

    def _save_finished(self, finished: tuple[int, Callable[[], list[dict[str, Any]]]] | None, cache: SampleCache,
                       bar: tqdm) -> None:
        if finished is not None:
            count, records = finished
            self._save(records(), cache)  # an image batch's records once its images are written (_run_batch)
            bar.update(count)

    def _save(self, records: list[dict[str, Any]], cache: SampleCache) -> None:
        if records and not (self.dir / "run.json").exists():
            # The folder's identity is written with its first sample, so a run that fails before it
            # produces anything leaves nothing behind.
            atomic_write_text(self.dir / "run.json", json.dumps(self._identity(), indent=2, sort_keys=True) + "\n")
        cache.append(records)

    @contextlib.contextmanager
    def _finishing(self, cache: SampleCache, bar: tqdm):
        """If the main thread fails while a batch is in flight, that batch is still waited for and saved
        (unless it failed too) before the error goes on."""
        try:
            yield
        except BaseException:
            if self.ahead.busy():
                try:
                    self._save_finished(self.ahead.swap(None), cache, bar)
                except Exception:
                    pass  # the first error is the one reported
            raise

    def _run_batch(self, task: Task, batch: list[tuple[int, Doc, Request, str]], items: list[Any],
                   scoring: str) -> Callable[[], list[dict[str, Any]]]:
        """A function that returns the batch's records; for an image task, once the images, whose writes
        this starts (`_save_images`), are on disk."""
        outputs = self._answer(task, items)

        def records(saved: list[tuple[str, str]] | None) -> list[dict[str, Any]]:
            out = []
            for k, ((i, doc, req, sha), output) in enumerate(zip(batch, outputs)):
                extra = {}
                if saved is not None:
                    output, extra["image_sha256"] = saved[k]
                out.append({**self._record(task, doc, i, req.prompt, output, None, sha, scoring), **extra})
            return out

        if task.output_type != "image":
            done = records(None)
            return lambda: done
        writes = self._save_images(task, [doc.doc_id for _, doc, _, _ in batch], outputs)
        return lambda: records(writes())

    def _save_images(self, task: Task, sample_ids: list[str], images: list[Any]) -> Callable[[], list[tuple[str, str]]]:
        """Start writing a batch's images (`_save_image`); returns a function that waits for them and gives
        each one's path and sha256, in order. With host workers (`prep_workers`, on a GPU) that many threads
        encode them at once while the next batch runs (PNG encoding takes ~10 ms an image on one core; zlib
        releases the GIL); without, they are written here, one after another."""
        if self.prep_workers <= 1 or len(images) <= 1:
            saved = [self._save_image(task, s, image) for s, image in zip(sample_ids, images)]
            return lambda: saved
        if self._writers is None:
            self._writers = ThreadPoolExecutor(self.prep_workers, thread_name_prefix="omnibench-image-writer")
        futures = [self._writers.submit(self._save_image, task, s, image) for s, image in zip(sample_ids, images)]
        return lambda: [f.result() for f in futures]

    def _answer(self, task: Task, reqs: list[Any]) -> list[Any]:
        """The model's outputs for `reqs` (requests, or their prepared items), `self.batch_size` at a time. With --batch_size auto, a call that
        runs out of memory is redone in halves, and the smaller size kept for the rest of the run (as
        accelerate's find_executable_batch_size does); otherwise it stops the run in one line."""
        outputs: list[Any] = []
        while len(outputs) < len(reqs):
            chunk = reqs[len(outputs):len(outputs) + self.batch_size]
            answered = self._call_model(task, chunk)
            if answered is not None:
                if len(answered) != len(chunk):
                    raise OmnibenchError(f"model {self.cfg.model} returned {len(answered)} outputs for {len(chunk)} "
                                         f"requests")
                outputs += answered
                if self.auto_batch and not self._batch_logged:
                    log.info(f"--batch_size auto: {self.batch_size} samples per batch")
                    self._batch_logged = True
                continue
            # Out of memory: freed outside the `except`, once its traceback no longer holds the batch.
            free_accelerator_memory()
            self.batch_size, self._batch_logged = len(chunk) // 2, False
            log.info(f"--batch_size auto: out of memory at {len(chunk)} samples per batch; trying {self.batch_size}")
        return outputs

    def _call_model(self, task: Task, chunk: list[Any]) -> list[Any] | None:
        """The model's outputs, or None when the call ran out of memory and a smaller batch may fit."""
        try:
            return self.model.generate_images(chunk) if task.output_type == "image" else self.model.generate_prepared(chunk)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if not self.auto_batch or len(chunk) == 1:
                raise OmnibenchError(f"out of memory on a batch of {len(chunk)} {task.name} samples (first: "
                                     f"{getattr(chunk[0], 'request', chunk[0]).sample_id}): finished samples are saved; re-run with a smaller "
                                     f"--batch_size and --resume") from exc
            return None

    def _record(self, task: Task, doc: Doc, index: int, prompt: str | None, output: Any, error: str | None,
                request_sha: str | None, scoring: str) -> dict[str, Any]:
        return {"sample_id": doc.doc_id, "doc_index": index, "prompt": prompt, "output": output, "error": error,
                "record": task.process(doc, output), "request": request_sha, "model_code": self.model_code,
                "scoring": scoring}

    def _image_rel(self, task: Task, sample_id: str) -> str:
        """Where a generated image lives, relative to the run folder (records stay valid if it moves)."""
        return f"images/{task.name}/{_safe_name(sample_id)}.png"

    def _save_image(self, task: Task, sample_id: str, image) -> tuple[str, str]:
        """The image written atomically; its path relative to the run folder and its sha256."""
        rel = self._image_rel(task, sample_id)
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.png")
        image.save(tmp)
        digest = identity.file_sha256(tmp)
        tmp.replace(path)
        return rel, digest

    def _write(self, tasks: list[Task], results: dict, counts: dict, timing: dict, fingerprints: dict,
               gathered: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        """results.json, report.md, samples and exports. Each run also keeps its own
        `history/results_<UTC time>.json`. A run that scored fewer samples of a task than the finished
        run in this folder (`--limit` on a finished run) never replaces it: its outputs go to
        `partial/<UTC time>/` and the log says so."""
        from omnibench.report import render_report

        cfg = self.cfg
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        target = self.dir
        kept = self._covers_more(counts)
        if kept:
            target = self.dir / "partial" / stamp
            log.warning(f"{self.dir / 'results.json'} kept: it scored more samples ({kept}); this run's outputs "
                        f"are in {target}")
        exports = {}
        for task in tasks:
            records = gathered[task.name]
            exports[task.name] = [str(p) for p in task.export([r["record"] for r in records], target)]
            if cfg.log_samples:
                suffix = f"_{cfg.log_samples_suffix}" if cfg.log_samples_suffix else ""
                atomic_write_text(target / f"samples_{task.name}{suffix}.jsonl", "".join(
                    json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records))
        identity_info = {
            "model_config": self.model_config, "model_code": self.model_code,
            "tasks": {t.name: {"args": t.args, "code": identity.code_version(type(t).__module__),
                               "scoring": identity.scoring_version(t)} for t in tasks}}
        out = {
            "schema_version": RESULTS_SCHEMA_VERSION,
            "model": cfg.model,
            "config_hash": self.chash,
            "results": results,
            "headline": {t.name: {"table": t.paper_table, "column": t.paper_column,
                                     "metric": t.paper_metric, "scale": t.paper_scale}
                         for t in tasks},
            # Declared by each task, so that a regression gate needs no rule about metric names.
            "directions": {t.name: {m: t.direction(m) for m in results[t.name]} for t in tasks},
            "tolerances": {t.name: {m: t.tolerance(m) for m in results[t.name] if t.tolerance(m) is not None}
                           for t in tasks},
            "n_samples": counts,
            "warnings": self._warnings(counts),
            "timing": timing,
            "exports": exports,
            "manifest": build_manifest(cfg.to_dict(), fingerprints, {
                "world_size": self.world, "identity": identity_info,
                "batch_size_chosen": self.batch_size,  # --batch_size auto's pick (else the number given)
                "prep_workers": self.prep_workers,
                "model_provenance": self._model.provenance() if self._model is not None else "model not loaded "
                                    "(every sample came from the cache)"}, argv=cfg.argv),
        }
        # The same scores in lmms-eval's results schema, for places that take lmms-eval results.
        out["exports"]["lmms_eval"] = [str(lmms_results.write(out, target / "lmms_eval_results.json"))]
        text = json.dumps(out, indent=2, sort_keys=True, default=str) + "\n"
        atomic_write_text(self.dir / "history" / f"results_{stamp}.json", text)
        atomic_write_text(target / "results.json", text)
        atomic_write_text(target / "report.md", render_report(out))
        out["output_dir"] = str(target)
        return out

    def _covers_more(self, counts: dict[str, dict[str, int]]) -> str:
        """'task: N > M' for each task the finished results.json here scored more samples of."""
        try:
            old = json.loads((self.dir / "results.json").read_text())["n_samples"]
        except (OSError, ValueError, KeyError, TypeError):
            return ""
        return ", ".join(f"{t}: {old[t]['total']} > {c['total']}" for t, c in counts.items()
                         if isinstance(old.get(t), dict) and old[t].get("total", 0) > c["total"])

    def _warnings(self, counts: dict[str, dict[str, int]]) -> list[str]:
        """What a reader of the numbers must know before comparing them with anything."""
        out = []
        weights = self.model_cls.weights_warning(self.model_cls.resolve_args(self.cfg.model_args))
        if weights:
            out.append(weights)
        for task, c in counts.items():
            if c["total"] < c["available"]:
                out.append(f"--limit {self.cfg.limit:g}: {task} scored {c['total']} of {c['available']} samples; "
                           f"not comparable with published numbers")
            if c["failed"]:
                out.append(f"{task}: {c['failed']} of {c['total']} samples failed and count as wrong")
        return out
