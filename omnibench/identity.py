"""What a cached sample's identity is made of, beyond the run's resolved configuration: the request the
model was given (prompt, image pixels, generation settings, seed) and the version of the code that
answered or scored it (the source of the model family or task module and of every project module it
imports, so an edit to README or to another family leaves a run valid)."""
from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from omnibench.protocol import Request

# Project packages whose source can change what a model or task produces; the engine (the rest of
# omnibench) does not: what it feeds a model is in the request fingerprint.
FOLLOWED = ("omnibench.models", "omnibench.tasks")
# Libraries whose version changes a model's numbers.
MODEL_LIBRARIES = ("torch", "transformers")


def request_fingerprint(request: Request) -> str:
    """sha256 of everything a model reads from a request."""
    h = hashlib.sha256()
    h.update(json.dumps({"prompt": request.prompt, "gen_kwargs": request.gen_kwargs, "seed": request.seed,
                         "images": [[img.mode, img.size] for img in request.images]},
                        sort_keys=True, default=str).encode())
    for img in request.images:
        h.update(img.tobytes())
    return h.hexdigest()


def _module_path(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec else None
    return Path(origin) if origin and origin.endswith(".py") else None


def _imports(path: Path, module: str) -> set[str]:
    """Absolute names of the modules `path` (module `module`) imports, and of the names it imports from
    them (they may be submodules)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            name = ".".join(p for p in (base if node.level else "", node.module or "") if p)
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)
    # A package's __init__ runs before any of its modules.
    parts = module.split(".")
    out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return out


def source_files(module: str) -> dict[str, Path]:
    """`module` and every module of its own top-level package or of the project's model and task
    packages that it imports, directly or not, by name."""
    top = module.split(".")[0]
    follow = tuple(FOLLOWED) + (() if top == "omnibench" else (top,))
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or not any(name == f or name.startswith(f + ".") for f in follow):
            continue
        path = _module_path(name)
        if path is None:
            continue
        seen[name] = path
        todo.extend(_imports(path, name))
    return seen


@lru_cache(maxsize=None)
def code_version(module: str, libraries: tuple[str, ...] = ()) -> str:
    """sha256 over `source_files(module)` and the versions of `libraries`. Cached per process: the
    source cannot change under a running evaluation."""
    seen = source_files(module)
    h = hashlib.sha256()
    for name in sorted(seen):
        h.update(f"{name}\n".encode() + seen[name].read_bytes() + b"\n")
    for lib in libraries:
        try:
            h.update(f"{lib}=={importlib.metadata.version(lib)}\n".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{lib} absent\n".encode())
    return h.hexdigest()[:16]


def model_code_version(cls: type) -> str:
    return code_version(cls.__module__, MODEL_LIBRARIES)


def scoring_version(task: Any) -> str:
    """What turns a model's output into a record: the task's code and its resolved arguments."""
    blob = json.dumps({"code": code_version(type(task).__module__), "args": task.args}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataset_sha256(ds: Any, memo: Path) -> str:
    """sha256 of what a `datasets` split holds: the bytes of the Arrow files it is read from (or of its
    table, for one in memory), its row selection and length; nothing about where or when it was stored.
    (`datasets`' own `_fingerprint` of a local copy changes with its path and file times, so it cannot
    say whether two machines evaluated the same data.) Each file's digest is memoised in `memo`, keyed
    by its path, size and modification time, so a large split is read once per machine."""
    h = hashlib.sha256()
    files = [Path(f["filename"]) for f in ds.cache_files]
    if files:
        for path in files:
            h.update(_memoised_sha256(path, memo).encode())
    else:
        h.update(_arrow_bytes(ds.data.table))
    if ds._indices is not None:
        h.update(_arrow_bytes(ds._indices.table))
    h.update(str(len(ds)).encode())
    return h.hexdigest()


def _arrow_bytes(table: Any) -> bytes:
    import pyarrow as pa
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _memoised_sha256(path: Path, memo: Path) -> str:
    from omnibench.cache import atomic_write_text
    stat = path.stat()
    key = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    entry = memo / f"{hashlib.sha256(key['path'].encode()).hexdigest()[:32]}.json"
    try:
        known = json.loads(entry.read_text())
        if {k: known.get(k) for k in key} == key:
            return known["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = file_sha256(path)
    atomic_write_text(entry, json.dumps({**key, "sha256": digest}))
    return digest


def file_digests(paths: Sequence[str | Path], desc: str = "hashing files") -> list[str]:
    """sha256 of each file's content, memoised on this machine by (path, size, mtime) under the cache
    root, so a second run reads nothing: a rewritten file (same size or not) is hashed again, a moved
    folder too, and a key built from these digests follows the content, not the folder's name."""
    from tqdm import tqdm

    from omnibench.data import cache_root

    memo = cache_root() / "digests"
    return [_memoised_sha256(Path(p), memo) for p in tqdm(paths, desc=desc, unit="file", disable=len(paths) < 1000)]


def local_file_digests(config: dict[str, Any]) -> dict[str, str]:
    """For each argument that names a local file or folder (a checkpoint, a weights file), a digest of
    its content: replacing the files behind an unchanged path changes the run's identity. Digests are
    memoised (`file_digests`), so only changed files are read. A hub id is not hashed: its files are
    fixed by the revision the hub cache holds."""
    out = {}
    for key, value in config.items():
        if not isinstance(value, str) or not value or not Path(value).expanduser().exists():
            continue
        root = Path(value).expanduser()
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        digests = file_digests(files, desc=f"hashing {key}")
        names = [f.name if root.is_file() else str(f.relative_to(root)) for f in files]
        out[key] = hashlib.sha256("".join(f"{n}:{d}\n" for n, d in zip(names, digests)).encode()).hexdigest()[:16]
    return out
