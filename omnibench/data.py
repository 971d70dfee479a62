"""Dataset access shared by all tasks: a hub id or a local copy (a `snapshot_download` copy in the hub
layout, or `save_to_disk` copies) in any layout a task declares, read by `datasets` with images left
encoded so one corrupt image fails one sample, not the run; and `python -m omnibench.data download`,
which fetches the datasets for an offline machine."""
from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from omnibench.args import Arg
from omnibench.protocol import Docs, OmnibenchError

log = logging.getLogger("omnibench")


def cache_root() -> Path:
    return Path(os.environ.get("OMNIBENCH_CACHE", Path.home() / ".cache" / "omnibench"))


def load_split(hub_id: str, split: str, config: str | None = None, data_dir: str | None = None,
               image_columns: tuple[str, ...] = ("image",)):
    """`datasets.load_dataset(data_dir or hub_id, config, split=split)`, image columns not decoded: one
    split of a known config, with no layout detection (tests and tools that know what they read)."""
    source = data_dir or hub_id
    if data_dir is not None and not Path(data_dir).exists():
        raise OmnibenchError(f"dataset folder not found: {data_dir} (pass --task_args source=<local copy of {hub_id}>)")
    return Source(source).load(config, split, image_columns)


def decode_image(value: Any) -> Image.Image:
    """An RGB PIL image from a `datasets` image cell ({"bytes", "path"}), a path, or a PIL image."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    try:
        if isinstance(value, dict):
            data = value.get("bytes")
            img = Image.open(io.BytesIO(data)) if data else Image.open(value["path"])
        else:
            img = Image.open(value)
        img.load()
        return img.convert("RGB")
    except Exception as exc:
        where = value.get("path") if isinstance(value, dict) else value
        raise OmnibenchError(f"unreadable image ({where or 'inline bytes'}): {type(exc).__name__}: {exc}") from exc


def fingerprint(ds, source: str, split: str, config: str | None = None, layout: str | None = None,
                revision: str | None = None) -> dict[str, Any]:
    """Source (and the layout and revision read there), split, row count, the `datasets` fingerprint, and
    a digest of the content evaluated that is the same on every machine (what a regression gate compares)."""
    from omnibench.identity import dataset_sha256
    return {"source": source, "layout": layout, "revision": revision, "config": config, "split": split,
            "num_rows": len(ds), "fingerprint": getattr(ds, "_fingerprint", None),
            "content_sha256": dataset_sha256(ds, cache_root() / "digests")}


COMPLETE = ".omnibench-complete"


def build_once(folder: Path, build: Callable[[Path], None]) -> Path:
    """`folder`, built by `build(tmp)` unless it is complete already; safe across processes and ranks.

    One process builds at a time (a file lock beside the folder, freed by the OS if its holder dies). It
    builds into a private folder (`<name>.tmp<pid>`), writes the completion marker last, and renames the
    result into place, so a reader never sees a half-built folder. Readers trust a folder only when its
    marker is there: one without it (a builder killed mid-way, an older cache layout) is removed and
    rebuilt. Private folders of dead builders are swept under the lock."""
    from filelock import FileLock

    if (folder / COMPLETE).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.with_name(f"{folder.name}.lock")):
        if (folder / COMPLETE).is_file():  # built by the process that held the lock before us
            return folder
        for stale in folder.parent.glob(f"{glob.escape(folder.name)}.tmp*"):  # the lock is ours: nobody is using them
            shutil.rmtree(stale, ignore_errors=True)
        tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
        try:
            tmp.mkdir()
            build(tmp)
            (tmp / COMPLETE).write_text(f"built by pid {os.getpid()}\n")
            shutil.rmtree(folder, ignore_errors=True)  # no marker: never trusted
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_sample(name: str, rows: list[dict[str, Any]], split: str, features=None) -> str:
    """Built-in sample rows of one split, written in the hub layout of a one-config repository."""
    return write_hub_layout(name, {"default": {split: rows}}, features)


def write_hub_layout(name: str, configs: dict[str, dict[str, list[dict[str, Any]]]], features=None) -> str:
    """Rows written as a hub dataset repository holds them; returns the folder. `{config: {split: rows}}`
    become parquet files (`data/<split>-00000-of-00001.parquet` for the `default` config,
    `<config>/<split>-00000-of-00001.parquet` for the others) and the README's YAML `configs:` block
    naming each config's files, so built-in samples and test fixtures go through the same layout
    detection and `load_dataset` path as real data. `features`: one `datasets.Features` for every
    config, or {config: Features}. Content-hashed into the folder name: changed rows never reuse a
    stale copy."""
    import datasets

    tables = {}
    digest = hashlib.sha256()
    for config, splits in configs.items():
        # datasets.Features is itself a dict: only a plain dict maps configs to features.
        feats = features if features is None or isinstance(features, datasets.Features) else features[config]
        for split, rows in splits.items():
            tables[config, split] = ds = datasets.Dataset.from_list(rows, features=feats)
            digest.update(repr((config, split, sorted(ds.features.items()), ds.num_rows)).encode())
            for row in rows:
                digest.update(repr({k: (hashlib.sha256(v["bytes"]).hexdigest() if isinstance(v, dict) and
                                        isinstance(v.get("bytes"), bytes) else v) for k, v in row.items()}).encode())
    folder = cache_root() / "samples" / f"{name}-{digest.hexdigest()[:12]}"

    def build(tmp: Path) -> None:
        readme = ["---", "configs:"]
        for config, splits in configs.items():
            sub = "data" if config == "default" else config
            (tmp / sub).mkdir(parents=True, exist_ok=True)
            readme += [f"- config_name: {config}", "  data_files:"]
            for split in splits:
                tables[config, split].to_parquet(str(tmp / sub / f"{split}-00000-of-00001.parquet"))
                readme += [f"  - split: {split}", f"    path: {sub}/{split}-*"]
        (tmp / "README.md").write_text("\n".join(readme + ["---", ""]))
    return str(build_once(folder, build))


def drawn_image(seed: int, size: int = 64, shape: str = "square") -> Image.Image:
    """A small deterministic picture (a coloured shape on a plain ground) for built-in samples."""
    from PIL import ImageDraw

    rng = hashlib.sha256(f"{seed}".encode()).digest()
    img = Image.new("RGB", (size, size), (rng[0], rng[1], rng[2]))
    draw = ImageDraw.Draw(img)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    colour = (255 - rng[0], 255 - rng[1], 255 - rng[2])
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
    return img


SampleBuilder = Callable[[], list[dict[str, Any]]]


def features_from(spec: dict[str, Any]):
    """`datasets.Features` from {column: "string" | "int64" | "image" | a datasets feature}."""
    import datasets

    return datasets.Features({col: datasets.Image() if f == "image" else datasets.Value(f) if isinstance(f, str)
                              else f for col, f in spec.items()})


def lazy_docs(ds, id_columns: Sequence[str], doc_id: Callable[[dict[str, Any]], str]) -> Docs:
    """Docs over a `datasets` split: ids from the id columns alone (no image bytes are read), each row
    read from the memory-mapped split when the runner asks for it."""
    columns = ds.select_columns(list(id_columns)).to_dict()
    ids = [doc_id(dict(zip(columns, values))) for values in zip(*columns.values())]
    return Docs(ids, ds.__getitem__)


# ----------------------------------------------------------------------------- sources and layouts
# A benchmark is published in several layouts (one config per subject or one for all; the three POPE
# splits as splits or as a column), by several repositories (lmms-lab/*, their lmms-lab-encoder/*
# mirrors, the authors' own), and users copy them in several ways (snapshot_download, save_to_disk).
# Tasks declare their layouts and repositories as data; `Source.read` finds which layout a source holds
# from what is in it (its configs and their splits), never from a folder's name, and checks the columns.

ANY = ""  # a save_to_disk copy that recorded no config (or no split): it stands for whichever is asked
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class Layout:
    """One published arrangement of a benchmark: the config holding some of its splits. `name` is what
    the fingerprint records; `name` and `config` may contain "{split}" (GQA names configs after splits)."""

    name: str
    config: str
    splits: tuple[str, ...]

    def config_for(self, split: str) -> str:
        return self.config.format(split=split)


@dataclass(frozen=True)
class HubSource:
    """A hub repository that publishes a benchmark; the first of a task's `SOURCES` is its default."""

    hub_id: str
    revision: str  # read by default: a commit, or "main" where none is pinned
    holds: str     # its layouts, in words (README)
    files: tuple[str, ...] = ()  # what `download` fetches (snapshot_download's allow_patterns); () = all


@dataclass
class Read:
    """A split as read from a source, with where it came from (the fingerprint records all of it)."""

    ds: Any
    source: str
    layout: str
    config: str | None
    split: str
    revision: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        return fingerprint(self.ds, self.source, self.split, self.config, self.layout, self.revision)


def concat(reads: Sequence[Read]) -> Read:
    """Reads of one source joined in order (several splits of a config, or one config per subject)."""
    import datasets

    if len(reads) == 1:
        return reads[0]
    first = reads[0]
    configs = list(dict.fromkeys(r.config for r in reads if r.config is not None))
    return Read(datasets.concatenate_datasets([r.ds for r in reads]), first.source, first.layout,
                "+".join(configs) or None, "+".join(dict.fromkeys(r.split for r in reads)), first.revision)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _recorded_config(path: Path) -> str | None:
    try:
        return json.loads((path / "dataset_info.json").read_text()).get("config_name")
    except (OSError, ValueError):
        return None


def _disk_copy(path: Path) -> tuple[str | None, dict[str, Path]] | None:
    """(recorded config, {split: folder}) of one `save_to_disk` copy (a DatasetDict or a Dataset)."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        return (_recorded_config(path / splits[0]) if splits else None), {s: path / s for s in splits}
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        split = json.loads((path / "state.json").read_text()).get("_split")
        return _recorded_config(path), {split or ANY: path}
    return None


def disk_copies(folder: Path) -> dict[str, dict[str, Path]] | None:
    """{config: {split: folder}} when `folder` is a `save_to_disk` copy or holds one per config (in
    sub-folders); None for anything else (a folder in the hub layout). A copy's config is the one its
    dataset_info.json records (else its folder's name), so a copy is known by what it holds."""
    try:
        top = _disk_copy(folder)
        if top is not None:
            return {top[0] or ANY: top[1]}
        out: dict[str, dict[str, Path]] = {}
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            found = _disk_copy(sub)
            if found is not None:
                out[found[0] if found[0] and found[0] not in out else sub.name] = found[1]
        return out or None
    except (OSError, ValueError, KeyError) as exc:
        raise OmnibenchError(f"unreadable save_to_disk copy in {folder}: {_first_line(exc)}") from None


class Source:
    """Where rows come from: a local folder (a `snapshot_download` copy in the hub layout, or
    `save_to_disk` copies) or a hub id, read through `datasets` (online, or from its offline cache)
    at `revision`. `label` is what the fingerprint names as the source (default: `given`)."""

    def __init__(self, given: str, revision: str | None = None, label: str | None = None) -> None:
        self.given, self.label = given, label or given
        path = Path(given).expanduser()
        self.local = path.exists()
        if not self.local and (not _HUB_ID.fullmatch(given) or given.startswith((".", "~"))):
            raise OmnibenchError(f"dataset folder not found: {given} (source= takes a local folder or a hub id "
                                 f"such as lmms-lab/POPE)")
        self.target = str(path) if self.local else given
        self.revision = None if self.local or revision in (None, "main") else revision
        self.where = f"folder {given}" if self.local else f"{given}@{revision or 'main'} from the hub"
        self.disk = disk_copies(path) if self.local and path.is_dir() else None
        self._splits: dict[str, list[str]] = {}

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """`fn()`, any failure one line naming the source, what was being done, and the way out."""
        try:
            return fn()
        except OmnibenchError:
            raise
        except Exception as exc:  # offline hub, missing files, unreadable parquet
            hint = ("is it a snapshot_download or save_to_disk copy of the dataset?" if self.local else
                    "offline? fetch it once with `python -m omnibench.data download <task> --to <folder>` "
                    "and pass --task_args <task>.source=<that folder>, or use --task_args sample=true")
            raise OmnibenchError(f"cannot load dataset {self.where} ({what}): {_first_line(exc)} -- {hint}") from exc

    def config_names(self) -> list[str]:
        import datasets

        if self.disk is not None:
            return list(self.disk)
        rev = {"revision": self.revision} if self.revision else {}
        return self._call("listing its configs", lambda: datasets.get_dataset_config_names(self.target, **rev))

    def split_names(self, config: str) -> list[str]:
        import datasets

        if self.disk is not None:
            return list(self.disk[config])
        if config not in self._splits:
            rev = {"revision": self.revision} if self.revision else {}
            self._splits[config] = self._call(f"listing the splits of config {config}", lambda: list(
                datasets.get_dataset_split_names(self.target, config, **rev)))
        return self._splits[config]

    def _has(self, config: str, split: str) -> bool:
        splits = self.split_names(config)
        return split in splits or (self.disk is not None and ANY in splits)

    def load(self, config: str | None, split: str, image_columns: Sequence[str] = ("image",)):
        """One split of one config (None: the only one), image columns left encoded."""
        import datasets

        if self.disk is not None:
            config = config if config is not None or len(self.disk) != 1 else next(iter(self.disk))
            splits = self.disk.get(config or "", {})
            path = splits.get(split) or splits.get(ANY)
            if path is None:
                raise OmnibenchError(f"cannot load dataset {self.where}: no config {config} split {split} in its "
                                     f"save_to_disk copies (it holds {self.holdings()})")
            ds = self._call(f"config {config}, split {split}", lambda: datasets.load_from_disk(str(path)))
        else:
            rev = {"revision": self.revision} if self.revision else {}
            ds = self._call(f"config {config}, split {split}", lambda: datasets.load_dataset(
                self.target, config, split=split, **rev))
        for col in image_columns:
            if col in ds.column_names and isinstance(ds.features[col], datasets.Image):
                ds = ds.cast_column(col, datasets.Image(decode=False))
        return ds

    def holdings(self) -> str:
        names = self.config_names()
        shown = ", ".join(n or "(unnamed)" for n in names[:12])
        return f"configs {shown}" + (f" and {len(names) - 12} more" if len(names) > 12 else "")

    def read(self, layouts: Sequence[Layout], split: str, config: str | None = None, columns: Sequence[str] = (),
             image_columns: Sequence[str] = ("image",)) -> Read:
        """`split` from the first of `layouts` this source holds (only `config`'s, when given); a config
        no layout names is read as it is when `config` names it. Columns are checked."""
        held = self.config_names()
        for layout in layouts:
            want = layout.config_for(split)
            if split not in layout.splits or config not in (None, want):
                continue
            name = want if want in held else ANY if ANY in held else None
            if name is not None and self._has(name, split):
                return self._read(layout.name.format(split=split), name, split, columns, image_columns)
        if config is not None and config in held and self._has(config, split):
            return self._read(f"config {config} (a layout omnibench does not know)", config, split, columns,
                              image_columns)
        known = "; ".join(dict.fromkeys(f"{l.name.format(split=split)}: config {l.config_for(split)} with "
                                        f"{', '.join(l.splits)}" for l in layouts))
        asked = f"config {config}, split {split}" if config else f"split {split}"
        raise OmnibenchError(f"{self.where} holds no {asked} in a layout omnibench knows (it holds "
                             f"{self.holdings()}; known layouts: {known}): pass config= or split= naming one it holds")

    def _read(self, layout: str, config: str, split: str, columns: Sequence[str], image_columns: Sequence[str]) -> Read:
        ds = self.load(config, split, image_columns)
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise OmnibenchError(f"{self.where} config {config or '(unnamed)'} split {split} has no column "
                                 f"{', '.join(missing)} (it has {', '.join(ds.column_names)}): it is not {layout}")
        return Read(ds, self.label, layout, config or None, split, self.revision)


def source_args(split: str, splits: tuple[str, ...] | None = None, split_help: str = "dataset split") -> tuple[Arg, ...]:
    """The `--task_args` every dataset-backed task takes: where it is read from and what inside it."""
    return (Arg("split", str, split, split_help, splits),
            Arg("source", str, None, "a hub id or a local folder (a snapshot_download or save_to_disk copy); "
                "default: the task's default source (README: Datasets: sources and layouts)"),
            Arg("config", str, None, "the config read inside the source (default: the one holding the split, "
                "found from what the source holds)"),
            Arg("data_dir", str, None, "deprecated: a local folder, the same as source=<folder>"),
            Arg("sample", bool, False, "the built-in offline sample: a few rows in the hub schema and layout, "
                "drawn images"))


def task_source(task_args: dict[str, Any], sources: Sequence[HubSource],
                sample: Callable[[], str] | None = None) -> Source:
    """The source a task reads: the built-in sample (`sample=true`, written by `sample()`), else `source=` (or its deprecated
    synonym `data_dir=`, a local folder), else the first of `sources`. A hub id of `sources` is read at
    its pinned revision, any other at main. `task_args["source"]` is set to what is read and
    `data_dir` cleared, so that the run's identity names the source whichever way it was given."""
    if sample is not None and task_args.get("sample"):
        return Source(sample(), label="built-in sample")
    given, data_dir = task_args.get("source"), task_args.get("data_dir")
    if data_dir is not None:
        if given is not None and given != data_dir:
            raise OmnibenchError(f"source={given} and data_dir={data_dir} name two sources: give source= only "
                                 f"(data_dir= is its deprecated synonym)")
        if not Path(data_dir).expanduser().exists():
            raise OmnibenchError(f"dataset folder not found: {data_dir} (data_dir= takes a local folder; give a "
                                 f"hub id or a folder as --task_args source=)")
        given = data_dir
    given = given or sources[0].hub_id
    task_args["source"], task_args["data_dir"] = given, None
    return Source(given, revision={s.hub_id: s.revision for s in sources}.get(given))


# ----------------------------------------------------------------------------- offline download

def download(entries: Sequence[str], to: Path) -> str:
    """Each task's default source, or the hub id given as `task=owner/name`, fetched by
    `huggingface_hub.snapshot_download` into `to/<repository name>` (only the files its evaluation reads);
    returns the `--task_args` line that reads the copies offline."""
    import huggingface_hub

    from omnibench import registry
    from omnibench.tasks import ALIASES

    args = []
    for entry in entries:
        name, _, hub_id = entry.partition("=")
        task = ALIASES.get(name.strip(), (name.strip(), {}))[0]
        sources = getattr(registry.get_task_class(task), "SOURCES", ())
        if not sources:
            raise OmnibenchError(f"task {task} reads no hub dataset: nothing to download")
        chosen = next((s for s in sources if s.hub_id == hub_id.strip()), None) if hub_id else sources[0]
        if chosen is None:  # another mirror: same layout as the default, so the same files
            chosen = HubSource(hub_id.strip(), "main", "", sources[0].files)
        folder = to / chosen.hub_id.split("/")[-1]
        revision = None if chosen.revision == "main" else chosen.revision
        log.info(f"{task}: {chosen.hub_id}@{chosen.revision} -> {folder}")
        try:
            huggingface_hub.snapshot_download(chosen.hub_id, repo_type="dataset", revision=revision,
                                              local_dir=str(folder), allow_patterns=list(chosen.files) or None)
        except Exception as exc:
            raise OmnibenchError(f"cannot download {chosen.hub_id}@{chosen.revision} into {folder}: "
                                 f"{_first_line(exc)} (no internet here? run this on a machine that has it and "
                                 f"copy {to} over)") from exc
        Source(str(folder)).config_names()  # the copy reads as a dataset before we say so
        args.append(f"{task}.source={folder}")
    return "--task_args " + ",".join(args)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m omnibench.data download pope,mme,gqa,mmmu,vqav2 --to /data`."""
    import argparse

    from omnibench.cli import OneLineParser
    from omnibench.errors import cli_main

    parser = OneLineParser(prog="python -m omnibench.data", description="Fetch benchmark datasets for an "
                           "offline machine.")
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("download", help="snapshot_download each task's dataset into a folder")
    get.add_argument("tasks", help="comma list of tasks (lmms-eval names too); task=owner/name for another "
                     "repository, e.g. pope=lmms-lab-encoder/POPE")
    get.add_argument("--to", required=True, help="folder that receives one sub-folder per dataset")

    def run() -> int:
        args = parser.parse_args(argv)
        line = download([t for t in args.tasks.split(",") if t.strip()], Path(args.to))
        print(f"offline, read these copies with:\n  {line}")
        return 0
    return cli_main(run)


if __name__ == "__main__":
    import sys
    sys.exit(main())
