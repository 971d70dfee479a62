"""Peak memory while a task walks a large split does not grow with the split (pytest-benchmark; enabled
with `python -m pytest tests/test_bench_memory.py --benchmark-enable`; in the normal suite it runs once
as a smoke test at 500 and 2000 rows). `OMNIBENCH_BENCH_ROWS=200000` measures at 200k and 50k rows
(about 30 GB of parquet plus the same again in the `datasets` cache, all under pytest's tmp_path and
removed afterwards).

The split is written in the lmms-lab/VQAv2 hub schema and layout (data/validation-0000N-of-0000M.parquet)
with ~150 KB incompressible PNGs, loaded through `tasks.vqav2.VQAv2(data_dir=...)` and iterated the way
the runner does (`docs[i]`, `build_request` decodes the image). What is measured is the anonymous
resident memory (RssAnon) of a fresh process above its level before loading; pages of the memory-mapped
Arrow files are file-backed and reclaimable (RssFile) and are reported, not counted.

Lazy rows hold one row at a time: with the `datasets` cache present (every run after the first), peak
anonymous memory is flat in the split's size and the test asserts peak_anon(4N) - peak_anon(N) <
64 MiB; only the ids list scales, ~100 bytes a row. The old eager `[row for row in ds]` keeps every
row's image bytes, ~150 KB a row: +225 MB from 500 to 2000 rows, +22 GB from 50k to 200k;
`test_the_bound_catches_eager_rows` shows that the bound fails for that path (at 500 and 2000 rows).

The first load on an empty `datasets` cache is reported, not asserted: `load_dataset` converts the
parquet to Arrow a shard at a time, and pyarrow's reader and allocator keep about 1.3x a shard's bytes
resident (measured: one 300 MB shard, ~440 MiB), which depends on shard size, not on the row count, but
rises by some tens of MiB over the first few shards."""
import gc
import os
import shutil
import struct
import threading
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest

ROWS = int(os.environ.get("OMNIBENCH_BENCH_ROWS", "2000"))
ROWS_PER_SHARD = 1000
ROWS_PER_ROW_GROUP = 100  # as in hub shards written by datasets < 4 (PARQUET_ROW_GROUP_SIZE_FOR_IMAGE_DATASETS)
SIDE = 224  # 224 x 224 x 3 bytes of noise: a ~150 KB PNG that deflate cannot shrink
POOL = 8  # distinct noise images; every row adds its own PNG text chunk, so no two rows share bytes
GROWTH_BOUND_MIB = 64


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def noise_pngs() -> list[bytes]:
    from omnibench.data import png_bytes
    from PIL import Image

    rng = np.random.default_rng(0)
    return [png_bytes(Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))) for _ in range(POOL)]


def write_split(folder: Path, rows: int, pool: list[bytes]) -> Path:
    """`rows` VQAv2 rows as parquet shards in the hub layout; row i's image is a pool image with an
    added `tEXt` chunk naming i (inserted before IEND: still a valid PNG, decoded in full)."""
    import datasets

    from omnibench.tasks.vqav2 import sample_features
    from omnibench.data import features_from

    features = features_from(sample_features())
    shards = -(-rows // ROWS_PER_SHARD)
    (folder / "data").mkdir(parents=True)
    answers = [{"answer": "yes", "answer_confidence": "yes", "answer_id": j + 1} for j in range(10)]
    for s in range(shards):
        ids = range(s * ROWS_PER_SHARD, min(rows, (s + 1) * ROWS_PER_SHARD))
        columns = {"question_type": ["is there a"] * len(ids), "multiple_choice_answer": ["yes"] * len(ids),
                   "answers": [answers] * len(ids), "image_id": list(ids), "answer_type": ["yes/no"] * len(ids),
                   "question_id": [i * 10 + 1 for i in ids], "question": [f"Is there a thing in picture {i}?" for i in ids],
                   "image": [{"bytes": pool[i % POOL][:-12] + png_chunk(b"tEXt", b"row\0%d" % i) + pool[i % POOL][-12:],
                              "path": None} for i in ids]}
        datasets.Dataset.from_dict(columns, features=features).to_parquet(
            str(folder / "data" / f"validation-{s:05d}-of-{shards:05d}.parquet"), batch_size=ROWS_PER_ROW_GROUP)
    return folder


def rss_mib() -> tuple[float, float]:
    """(RssAnon, RssFile) of this process in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["RssAnon"].split()[0]) / 1024, int(fields["RssFile"].split()[0]) / 1024


def walk(folder: str, eager: bool = False) -> dict[str, float]:
    """In a fresh process: load the split through VQAv2, build every request (images decoded), and
    return the peak RssAnon above the level before loading, the peak RssFile, and the seconds taken.
    A thread samples every 5 ms (the load phase included) and the loop every 16 rows."""
    import datasets  # noqa: F401  (imported before the baseline: its import is not the split's memory)

    from omnibench.tasks.vqav2 import VQAv2

    gc.collect()
    base_anon, _ = rss_mib()
    peak = [0.0, 0.0]

    def sample() -> None:
        anon, file = rss_mib()
        peak[0], peak[1] = max(peak[0], anon - base_anon), max(peak[1], file)
    stop = threading.Event()
    sampler = threading.Thread(target=lambda: [sample() for _ in iter(lambda: stop.wait(0.005), True)], daemon=True)
    sampler.start()
    start = time.perf_counter()
    task = VQAv2(data_dir=folder, split="validation")
    docs = task.docs()
    rows = [row for row in task.ds] if eager else None  # the old path: every row, image bytes included
    for i in range(len(docs)):
        request = task.build_request(docs[i])
        assert request.images[0].size == (SIDE, SIDE)
        if i % 16 == 0:
            sample()
    seconds = time.perf_counter() - start
    sample()
    stop.set()
    sampler.join()
    del rows
    return {"rows": len(docs), "peak_anon_mib": peak[0], "peak_file_mib": peak[1], "seconds": seconds}


def measure(folder: Path, eager: bool = False) -> dict[str, float]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:  # a fresh process each time
        return pool.submit(walk, str(folder), eager).result()


def cold_and_warm(folder: Path) -> dict[str, dict[str, float]]:
    """The first walk has `load_dataset` convert the parquet into its Arrow cache; the second reads that
    cache memory-mapped, as every later run does."""
    return {"cold": measure(folder), "warm": measure(folder)}


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """`split(n)`: the folder of an n-row split, written once; the `datasets` cache goes under the same
    temporary folder, and everything is removed at the end."""
    root = tmp_path_factory.mktemp("bench_memory")
    saved = {k: os.environ.get(k) for k in ("HF_DATASETS_CACHE", "HF_DATASETS_OFFLINE")}
    os.environ.update(HF_DATASETS_CACHE=str(root / "hf_datasets"), HF_DATASETS_OFFLINE="1")  # read by the spawned walkers
    pool, folders = noise_pngs(), {}
    assert all(140_000 < len(p) < 160_000 for p in pool)
    try:
        yield lambda n: folders.get(n) or folders.setdefault(n, write_split(root / f"vqav2-{n}", n, pool))
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        shutil.rmtree(root, ignore_errors=True)


def test_peak_memory_does_not_grow_with_rows(benchmark, split):
    small = cold_and_warm(split(ROWS // 4))
    big = benchmark.pedantic(cold_and_warm, args=(split(ROWS),), rounds=1, iterations=1)
    for cache in ("cold", "warm"):
        assert (small[cache]["rows"], big[cache]["rows"]) == (ROWS // 4, ROWS)
        for m in (small[cache], big[cache]):
            benchmark.extra_info.update({f"{cache}_{k}_{m['rows']}": v for k, v in m.items() if k != "rows"})
            print(f"\n{cache} cache, {m['rows']} rows: peak anon {m['peak_anon_mib']:.1f} MiB above baseline, "
                  f"peak file-backed {m['peak_file_mib']:.1f} MiB, {m['seconds']:.1f} s")
    assert big["warm"]["peak_anon_mib"] - small["warm"]["peak_anon_mib"] < GROWTH_BOUND_MIB, (small, big)


def test_the_bound_catches_eager_rows(split):
    """The guard: the old eager path, at 500 and 2000 rows, grows by ~225 MB and fails the bound."""
    for n in (500, 2000):
        measure(split(n))  # the datasets cache, so that both sides are measured warm
    small, big = measure(split(500), eager=True), measure(split(2000), eager=True)
    assert big["peak_anon_mib"] - small["peak_anon_mib"] > GROWTH_BOUND_MIB, (small, big)
