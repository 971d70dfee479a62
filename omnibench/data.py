"""Dataset access shared by all tasks: the hub id or a local copy in the same schema, loaded by
`datasets.load_dataset`, with images left encoded so one corrupt image fails one sample, not the run."""
from __future__ import annotations

import glob
import hashlib
import io
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from omnibench.args import Arg
from omnibench.protocol import Docs, OmnibenchError


def cache_root() -> Path:
    return Path(os.environ.get("OMNIBENCH_CACHE", Path.home() / ".cache" / "omnibench"))


def load_split(hub_id: str, split: str, config: str | None = None, data_dir: str | None = None,
               image_columns: tuple[str, ...] = ("image",)):
    """`datasets.load_dataset(data_dir or hub_id, config, split=split)`, image columns not decoded.

    `data_dir` is a local snapshot of the hub repository (parquet files in its layout) or any folder
    that `load_dataset` reads with the same columns.
    """
    import datasets

    source = data_dir or hub_id
    if data_dir is not None and not Path(data_dir).exists():
        raise OmnibenchError(f"dataset folder not found: {data_dir} (pass --task_args data_dir=<local copy of {hub_id}>)")
    try:
        ds = datasets.load_dataset(source, config, split=split)
    except Exception as exc:  # offline hub, wrong split, unreadable files: one actionable line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OmnibenchError(
            f"cannot load dataset '{source}' (config={config}, split={split}): {first[:200]} "
            f"-- download it once and pass --task_args data_dir=<folder>, or use --task_args sample=true"
        ) from exc
    for col in image_columns:
        if col in ds.column_names and isinstance(ds.features[col], datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))
    return ds


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


def fingerprint(ds, source: str, split: str, config: str | None = None) -> dict[str, Any]:
    """Source, split, row count, the `datasets` fingerprint, and a digest of the content evaluated that
    is the same on every machine (what a regression gate compares)."""
    from omnibench.identity import dataset_sha256
    return {"source": source, "config": config, "split": split, "num_rows": len(ds),
            "fingerprint": getattr(ds, "_fingerprint", None),
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
    """Write built-in sample rows as parquet in the hub layout (`data/<split>-00000-of-00001.parquet`)
    and return the folder, so sample runs go through the same `load_dataset` path as real data.
    Rows are content-hashed into the folder name: a changed sample never reuses a stale copy."""
    import datasets

    ds = datasets.Dataset.from_list(rows, features=features)
    digest = hashlib.sha256(repr((split, sorted(ds.features.items()), ds.num_rows)).encode())
    for row in rows:
        digest.update(repr({k: (hashlib.sha256(v["bytes"]).hexdigest() if isinstance(v, dict) and "bytes" in v else v)
                            for k, v in row.items()}).encode())
    folder = cache_root() / "samples" / f"{name}-{digest.hexdigest()[:12]}"

    def build(tmp: Path) -> None:
        (tmp / "data").mkdir()
        ds.to_parquet(str(tmp / "data" / f"{split}-00000-of-00001.parquet"))
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


def source_args(split: str, splits: tuple[str, ...] | None = None) -> tuple[Arg, ...]:
    """The `--task_args` every dataset-backed task takes: which split, and where it is read from."""
    return (Arg("split", str, split, "dataset split", splits),
            Arg("data_dir", str, None, "a local copy of the hub dataset (parquet files in its layout)"),
            Arg("sample", bool, False, "the built-in offline sample: a few rows in the hub schema, drawn images"))


def lazy_docs(ds, id_columns: Sequence[str], doc_id: Callable[[dict[str, Any]], str]) -> Docs:
    """Docs over a `datasets` split: ids from the id columns alone (no image bytes are read), each row
    read from the memory-mapped split when the runner asks for it."""
    columns = ds.select_columns(list(id_columns)).to_dict()
    ids = [doc_id(dict(zip(columns, values))) for values in zip(*columns.values())]
    return Docs(ids, ds.__getitem__)


def task_split(task_args: dict[str, Any], hub_id: str, split: str, sample_name: str,
               sample_rows: SampleBuilder, sample_features: dict[str, Any], config: str | None = None,
               image_columns: tuple[str, ...] = ("image",)):
    """The split a task evaluates, and where it came from: the built-in sample (`sample=true`, rows in
    the hub schema written as parquet), a local copy (`data_dir=`), or the hub id. Returns (ds, source)."""
    data_dir = task_args.get("data_dir")
    if task_args.get("sample"):
        data_dir = write_sample(sample_name, sample_rows(), split, features_from(sample_features))
    ds = load_split(hub_id, split, config=config, data_dir=data_dir, image_columns=image_columns)
    return ds, data_dir or hub_id
