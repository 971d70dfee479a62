"""FID end to end on one GPU, through the real runner: `run_eval.py --tasks coco_fid30k` on a full-size
OmniMamba with random weights, against COCO-format data drawn by code, with NVIDIA's real Inception file.

What it times is what a user's FID-30K run does, on fewer prompts: load the checkpoint, read and hash
the reference images, generate one 256 px image a prompt at --batch_size (PNG writes included), then the
Inception features of the reference images and of the generated ones, and the FID. The FID value itself
means nothing (random weights, drawn images); the wall-clock and where it went do.

    python -m bench.fid_end_to_end --out $OUT --work /tmp/fid --prompts 3000 --dtype bfloat16 --inception <default_1.pt>

Writes fid_end_to_end.json (the run's wall-clock, when its first and last image were written, the
results file) and fid_end_to_end.log (the runner's output) into --out.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
from pathlib import Path

WIDTH, HEIGHT = 640, 480  # COCO val2014's most common size


def draw(k: int, folder: str) -> str:
    """A COCO-sized JPEG drawn from seed k: a tinted background, a few shapes, some noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = random.Random(k)
    img = Image.new("RGB", (WIDTH, HEIGHT), tuple(rng.randrange(256) for _ in range(3)))
    pen = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.randrange(WIDTH - 40), rng.randrange(HEIGHT - 40)
        box = (x0, y0, x0 + rng.randrange(20, 300), y0 + rng.randrange(20, 200))
        colour = tuple(rng.randrange(256) for _ in range(3))
        (pen.ellipse if rng.random() < 0.5 else pen.rectangle)(box, fill=colour)
    noise = np.random.default_rng(k).integers(-12, 13, (HEIGHT, WIDTH, 3))
    pixels = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    name = f"COCO_val2014_{100000 + k:012d}.jpg"
    Image.fromarray(pixels).save(Path(folder) / name, format="JPEG", quality=90)
    return name


def write_coco(root: Path, n: int) -> tuple[str, str]:
    """captions_val2014.json in the official layout (five captions an image) and n drawn JPEGs."""
    from omnibench.models.omnimamba.checkpoint import TINY_WORDS

    folder = root / "val2014"
    folder.mkdir(parents=True, exist_ok=True)
    with multiprocessing.Pool(min(16, os.cpu_count() or 1)) as pool:
        names = pool.starmap(draw, [(k, str(folder)) for k in range(n)])
    rng = random.Random(0)
    images, annotations = [], []
    for k, name in enumerate(names):
        image_id = 100000 + k
        images.append({"license": 1, "file_name": name, "coco_url": "", "height": HEIGHT, "width": WIDTH,
                       "date_captured": "2013-11-14 11:18:45", "flickr_url": "", "id": image_id})
        for j in range(5):
            words = " ".join(rng.choice(TINY_WORDS) for _ in range(rng.randrange(8, 15)))
            annotations.append({"image_id": image_id, "id": 5 * image_id + j, "caption": f"A {words}."})
    path = root / "annotations" / "captions_val2014.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations}))
    return str(path), str(folder)


def write_checkpoint(folder: Path) -> None:
    """The full OmniMamba-1.3B architecture (vision towers and VQ included) with random weights, in the
    official layout `from_pretrained` reads; the tiny word-level tokenizer (captions are padded or cut to
    the fixed caption length, so the tokenizer does not change the shapes)."""
    import torch

    from omnibench.models.omnimamba.checkpoint import random_full, save_pretrained, tiny_base_tokenizer

    save_pretrained(random_full("cuda", torch.bfloat16), tiny_base_tokenizer(), folder)
    torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", required=True, help="scratch folder for the data, the checkpoint and the run")
    ap.add_argument("--prompts", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--inception", required=True, help="NVIDIA's Inception TorchScript (fid-helper's default_1.pt)")
    ap.add_argument("--dtype", default="auto", help="run_eval.py's --dtype (auto: float32 for OmniMamba, as upstream)")
    ap.add_argument("--tiny", action="store_true", help="the tiny preset on the CPU: a smoke run of this script")
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"prompts": args.prompts, "batch_size": args.batch_size, "dtype": args.dtype,
                    "reference_image_size": [WIDTH, HEIGHT]}
    t0 = time.perf_counter()
    captions, images = write_coco(work / "coco", args.prompts)
    result["write_data_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if args.tiny:
        model_args, device = "preset=tiny", "cpu"
    else:
        write_checkpoint(work / "ckpt")
        model_args, device = f"pretrained={work / 'ckpt'}", "cuda"
    result["write_checkpoint_s"] = time.perf_counter() - t0
    print(json.dumps(result), flush=True)
    runs = work / f"runs_{time.strftime('%Y%m%dT%H%M%S')}"  # this run's alone: its images and results are counted
    cmd = [sys.executable, "run_eval.py", "--model", "omnimamba", "--model_args", model_args,
           "--tasks", "coco_fid30k", "--task_args",
           f"captions={captions},images={images},num_prompts={args.prompts},inception={args.inception}",
           "--batch_size", str(args.batch_size), "--device", device, "--dtype", args.dtype, "--output_path", str(runs)]
    result["command"] = " ".join(cmd)
    start = time.time()
    with open(out / "fid_end_to_end.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    end = time.time()
    result["returncode"] = proc.returncode
    result["run_wall_s"] = end - start
    pngs = sorted(runs.glob("*/images/coco_fid30k/*.png"), key=lambda p: p.stat().st_mtime)
    if pngs:
        first, last = pngs[0].stat().st_mtime, pngs[-1].stat().st_mtime
        result.update({"images_written": len(pngs), "first_image_after_s": first - start,
                       "last_image_after_s": last - start, "after_last_image_s": end - last,
                       "images_per_s_first_to_last": (len(pngs) - 1) / (last - first) if last > first else None})
    results = sorted(runs.glob("*/results.json"))
    if results:
        result["results"] = json.loads(results[-1].read_text())
    (out / "fid_end_to_end.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "results"}, indent=1), flush=True)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
