"""How long writing one batch of generated images takes, one after another and by several threads (what
omnibench.runner does for an image task with host workers, on a GPU run), on this machine's CPU.

    python -m bench.image_write [--batch 16] [--size 256] [--threads 1,2,8] [--repeats 5]

The images are drawn shapes with Gaussian noise (sigma 12), which PNG compresses about as badly as
photographs; each is written as the runner writes it (PIL's PNG encoder, default settings). Prints one
JSON line per thread count: the median milliseconds per batch over the repeats and the images per second.
The next model call of a FID run waits for its batch to be on disk, so this is device idle time per batch.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from omnibench import data


def images(batch: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    out = []
    for k in range(batch):
        a = np.asarray(data.drawn_image(k, size=size, shape="circle" if k % 2 else "square"), dtype=np.float32)
        out.append(Image.fromarray(np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", default="1,2,8")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    batch = images(args.batch, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"{k}.png" for k in range(len(batch))]

        def write(k: int) -> None:
            batch[k].save(paths[k])

        for threads in (int(t) for t in args.threads.split(",")):
            pool = ThreadPoolExecutor(threads) if threads > 1 else None
            times = []
            for _ in range(args.repeats + 1):  # the first pass warms the pool and the page cache
                start = time.perf_counter()
                if pool is None:
                    for k in range(len(batch)):
                        write(k)
                else:
                    list(pool.map(write, range(len(batch))))
                times.append(time.perf_counter() - start)
            if pool is not None:
                pool.shutdown()
            ms = 1e3 * statistics.median(times[1:])
            print(json.dumps({"threads": threads, "cpu_count": os.cpu_count(), "batch": args.batch, "size": args.size,
                              "ms_per_batch": round(ms, 1), "images_per_s": round(1e3 * args.batch / ms, 1)}))


if __name__ == "__main__":
    main()
