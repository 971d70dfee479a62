"""MS-COCO FID-30K (the paper's Table 2): one image per caption for 30K captions of COCO val2014, FID of
the generated images against the real val2014 images.

Prompts: `num_prompts` (30000) distinct val2014 images drawn with `random.Random(prompt_seed)` from the
image ids in ascending order, then one of each image's captions drawn with the same generator (the
protocol of the widely used 30K COCO-val prompt lists: 30K images, one of their five captions each).
The same source and seed always give the same prompts; their ids are hashed into the fingerprint.
`--limit n` evaluates the first n of them, itself a random sample. A sample id is
`<image_id>_<caption index>`, the index counting the image's captions in annotation-id order (json) or
in the order of the hub row's `answer` list.

Reference: `reference=all` (default) is every val2014 image of the source, the usual "full validation
set" statistics, computed once and cached by source, size and network; `reference=sampled` is the
images of the evaluated prompts only. Real and generated images alike are squared to `ref_size` (256)
by `ref_resize`: by default the field's recipe (U-ViT's centre-square crop then PIL Lanczos, as
OmniMamba's data code and LlamaGen's T2I evaluation do), and scored with clean-fid's clean mode (see
tasks/fid.py). `prompts_file=` evaluates a fixed prompt list (LlamaGen's coco_captions.csv) instead of
the seeded draw. Every reference image is checked before generation starts, and the cached reference
statistics are keyed by the images' content, not by their folder.
The paper does not say which reference or resize it used, so the report states ours.

Sources: `captions=<captions_val2014.json>` with `images=<val2014 folder>` (the official files),
`sample=true` (a few drawn images and captions in the official format), or the hub copy
`lmms-lab/COCO-Caption` split `val` (`source=` for a mirror or a local copy): `question_id` is the file
name, `answer` the captions.
Other task args: `inception=` (weights file, or $OMNIBENCH_INCEPTION), `fid_device` (cuda when there is
one), `fid_batch_size` (250), `fid_workers` (image decoding processes, up to 8), `fid_resize` (where
clean-fid's resize to 299 runs: `device`, in batches on the features' device with clean-fid's exact
arithmetic, the default on CUDA; or `workers`, clean-fid's own code in the decoding processes, the default
on CPU; part of the cached reference statistics' key).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from omnibench import data, identity
from omnibench.args import Arg
from omnibench.protocol import Doc, Docs, OmnibenchError, Request, Task
from omnibench.tasks import fid

HUB_SPLIT = "val"
LAYOUTS = (data.Layout("lmms-lab/COCO-Caption (default config)", "default", ("val", "test")),)
_FILES = ("README.md", "data/val-*")  # the test split (images without captions) is never read
SOURCES = (
    data.HubSource("lmms-lab/COCO-Caption", "main", "default config: val (the 40,504 val2014 images, their "
                   "captions), test", _FILES),
    data.HubSource("lmms-lab-encoder/COCO-Caption", "main", "a mirror of lmms-lab/COCO-Caption (what lmms-eval "
                   "0.7.3 reads)", _FILES),
)
REFERENCES = ("all", "sampled")


def sample_prompts(captions: dict[int, Sequence[str]], n: int, seed: int) -> list[tuple[int, int]]:
    """(image_id, caption index) for min(n, #images) distinct images, one caption each, seeded."""
    rng = random.Random(seed)
    chosen = rng.sample(sorted(captions), min(n, len(captions)))
    return [(image_id, rng.randrange(len(captions[image_id]))) for image_id in chosen]


def image_id_from_file(name: str) -> int:
    """COCO_val2014_000000391895.jpg -> 391895."""
    return int(Path(name).stem.rsplit("_", 1)[-1])


@dataclass
class CocoVal:
    """Captions per image id, and what the real image of an id is (a path or a `datasets` row index)."""

    captions: dict[int, list[str]]
    images: dict[int, Any]
    source: str
    identity: dict[str, Any]  # hashes that change whenever the captions or the images do
    ds: Any = None
    read: dict[str, Any] | None = None  # a hub copy's layout and revision

    def reference_items(self, ids: Sequence[int]) -> Sequence[Any]:
        return [self.images[i] for i in ids] if self.ds is None else _HubImages(self.ds, [self.images[i] for i in ids])


class _HubImages(Sequence):
    """Image cells of chosen hub rows, read one at a time (the val split is ~6 GB of JPEG)."""

    def __init__(self, ds, rows: list[int]) -> None:
        self.ds, self.rows = ds, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.ds[self.rows[i]]["image"]


def load_captions_json(captions: str, images: str | None) -> CocoVal:
    """The official annotation file (`images`, `annotations`) and the folder of its image files."""
    path = Path(captions)
    if not path.is_file():
        raise OmnibenchError(f"captions file not found: {captions} (pass --task_args captions=<captions_val2014.json>)")
    if not images or not Path(images).is_dir():
        raise OmnibenchError(f"images folder not found: {images} (pass --task_args images=<val2014 folder>, "
                             f"the real images FID compares against)")
    raw = path.read_bytes()
    try:
        ann = json.loads(raw)
        files = {img["id"]: img["file_name"] for img in ann["images"]}
        annotations = ann["annotations"]
    except (ValueError, KeyError, TypeError) as exc:
        raise OmnibenchError(f"{captions} is not a COCO captions file ({type(exc).__name__}: {exc}): pass "
                             f"captions=<captions_val2014.json>") from None
    by_image: dict[int, list[tuple[int, str]]] = {}
    for a in annotations:
        by_image.setdefault(a["image_id"], []).append((a["id"], a["caption"].strip()))
    captions_by_image = {i: [c for _, c in sorted(v)] for i, v in by_image.items() if i in files}
    paths = {i: str(Path(images) / files[i]) for i in files}
    check_reference_images([paths[i] for i in sorted(paths)])
    # Keyed by content: a rewritten image changes it, a moved folder does not.
    digests = identity.file_digests([paths[i] for i in sorted(paths)], desc="hashing reference images")
    listing = hashlib.sha256("".join(f"{files[i]}:{d}\n" for i, d in zip(sorted(paths), digests)).encode())
    return CocoVal(captions_by_image, paths, str(path),
                   {"captions_sha256": hashlib.sha256(raw).hexdigest(), "image_files_sha256": listing.hexdigest()})


def check_reference_images(paths: Sequence[str]) -> None:
    """Every reference image is there and is an image, before a single picture is generated (not after
    30,000 of them): one line naming the first that is not."""
    from PIL import Image
    from tqdm import tqdm

    for path in tqdm(paths, desc="checking reference images", unit="image", disable=len(paths) < 1000):
        try:
            with Image.open(path) as img:
                img.size  # the header parses
        except FileNotFoundError:
            raise OmnibenchError(f"reference image missing: {path} (the images= folder must hold every image of "
                                 f"the captions file)") from None
        except Exception as exc:
            raise OmnibenchError(f"unreadable reference image {path}: {type(exc).__name__}: {exc} "
                                 f"(replace it, or remove it from the captions file)") from None


def load_prompt_file(path: str) -> list[str]:
    """LlamaGen's / GigaGAN's fixed prompt list (`evaluations/t2i/coco_captions.csv`): tab-separated, one
    column `Prompt`, 30,000 COCO captions."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except OSError as exc:
        raise OmnibenchError(f"cannot read prompts_file {path}: {exc.strerror or exc}") from None
    if not rows or "Prompt" not in rows[0]:
        raise OmnibenchError(f"prompts_file {path} has no 'Prompt' column (LlamaGen's coco_captions.csv format: "
                             f"tab-separated, header 'Prompt')")
    return [r["Prompt"] for r in rows]


def load_hub(task_args: dict[str, Any]) -> CocoVal:
    """The val split of the hub copy `source=` names (default: lmms-lab/COCO-Caption): `question_id` is
    the image's file name, `answer` its captions."""
    read = data.task_source(task_args, SOURCES).read(LAYOUTS, HUB_SPLIT, columns=("question_id", "answer", "image"))
    ds = read.ds
    captions, rows = {}, {}
    for row, (qid, answers) in enumerate(zip(ds["question_id"], ds["answer"])):
        image_id = image_id_from_file(qid)
        captions[image_id] = [a.strip() for a in answers]
        rows[image_id] = row
    return CocoVal(captions, rows, read.source, {"datasets_fingerprint": getattr(ds, "_fingerprint", None),
                                                 "num_rows": len(ds)}, ds,
                   {"layout": read.layout, "revision": read.revision})


def write_sample() -> tuple[str, str]:
    """A few drawn images and their captions as `captions_val2014.json` + image folder (official layout)."""
    shapes = ["circle", "square"]
    images, annotations = [], []
    for k in range(6):
        image_id = 100 + k
        name = f"COCO_val2014_{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": name, "width": 64, "height": 64})
        for j in range(2):
            annotations.append({"image_id": image_id, "id": 1000 + 10 * k + j,
                                "caption": f"A {shapes[k % 2]} on a plain background, picture {k} caption {j}."})
    blob = json.dumps({"info": {"description": "omnibench built-in sample"}, "images": images,
                       "annotations": annotations, "licenses": []}, sort_keys=True)
    folder = data.cache_root() / "samples" / f"coco_fid-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def build(tmp: Path) -> None:
        (tmp / "val2014").mkdir()
        for k, img in enumerate(images):
            data.drawn_image(k, size=64, shape=shapes[k % 2]).save(tmp / "val2014" / img["file_name"], format="JPEG")
        (tmp / "annotations").mkdir()
        (tmp / "annotations" / "captions_val2014.json").write_text(blob)
    folder = data.build_once(folder, build)
    return str(folder / "annotations" / "captions_val2014.json"), str(folder / "val2014")


class CocoFid(Task):
    name = "coco_fid30k"
    output_type = "image"
    paper_table = "table2_fid"
    paper_column = "FID-30K"
    paper_metric = "fid"
    paper_scale = 1.0
    lower_is_better = ("fid",)
    neutral = ("fid_images", "fid_failed", "fid_reference_images")
    tolerances = {"fid": 0.5}
    SOURCES = SOURCES
    ARGS = (
        Arg("captions", str, None, "the official captions_val2014.json (with images=)"),
        Arg("images", str, None, "the val2014 image folder (with captions=)"),
        Arg("source", str, None, "the hub dataset of val2014 captions and images: a hub id or a local folder (a "
            "snapshot_download or save_to_disk copy); default: lmms-lab/COCO-Caption"),
        Arg("data_dir", str, None, "deprecated: a local folder, the same as source=<folder>"),
        Arg("sample", bool, False, "the built-in offline sample: a few captions and drawn images"),
        Arg("num_prompts", int, 30000, "captions drawn (one per image at most)"),
        Arg("prompt_seed", int, 0, "seed of the caption draw"),
        Arg("reference", str, "all", "reference images: all of val2014, or those of the drawn captions", REFERENCES),
        Arg("ref_size", int, 256, "side in pixels the reference and generated images are brought to"),
        Arg("ref_resize", str, "crop_lanczos", "how an image becomes a square: the field's centre-square crop then "
            "PIL Lanczos (U-ViT, LlamaGen), or shorter side bicubic then centre crop", fid.SQUARE_RECIPES),
        Arg("prompts_file", str, None, "a fixed prompt list instead of the seeded draw (LlamaGen's "
            "coco_captions.csv: tab-separated, column Prompt); the reference is then all of val2014"),
        Arg("inception", str, None, "local Inception weights file (default: the bundled or cached one)"),
        Arg("fid_device", str, None, "device for Inception features (default: cuda if available)"),
        Arg("fid_batch_size", int, fid.BATCH_SIZE, "Inception batch size"),
        Arg("fid_workers", int, None, "image-loading workers (default: min(8, CPU count))"),
        Arg("fid_resize", str, None, "where clean-fid's resize to 299 runs: on the FID device in batches (same "
            "pixels, bit for bit) or in the image-loading workers (default: device on CUDA, workers on CPU)",
            fid.RESIZES),
    )

    def __init__(self, **task_args: Any) -> None:
        super().__init__(**task_args)
        args = self.args
        self.num_prompts, self.prompt_seed = args["num_prompts"], args["prompt_seed"]
        if self.num_prompts < 1:
            raise OmnibenchError(f"num_prompts={self.num_prompts} selects nothing: give a positive count")
        self.reference, self.ref_size = args["reference"], args["ref_size"]
        if args["captions"]:
            self.coco = load_captions_json(args["captions"], args["images"])
        elif args["sample"]:
            self.coco = load_captions_json(*write_sample())
        else:
            self.coco = load_hub(args)
        self.recipe = args["ref_resize"]
        self.prompt_list = load_prompt_file(args["prompts_file"])[:self.num_prompts] if args["prompts_file"] else None
        if self.prompt_list is not None and self.reference != "all":
            raise OmnibenchError("reference=sampled needs the drawn captions' images: a prompts_file has no image "
                                 "ids (use reference=all)")
        self.pairs = [] if self.prompt_list is not None else \
            sample_prompts(self.coco.captions, self.num_prompts, self.prompt_seed)

    def docs(self) -> Docs:
        if self.prompt_list is not None:  # image_id None: a fixed prompt belongs to no reference image
            return Docs([f"p{n:05d}" for n in range(len(self.prompt_list))], lambda n: {
                "image_id": None, "caption_index": n, "caption": self.prompt_list[n]})
        return Docs([f"{i}_{k}" for i, k in self.pairs], lambda n: {
            "image_id": self.pairs[n][0], "caption_index": self.pairs[n][1],
            "caption": self.coco.captions[self.pairs[n][0]][self.pairs[n][1]]})

    def fingerprint(self) -> dict[str, Any]:
        ids = "\n".join(self.docs().ids)
        weights = fid.inception_path(self.args["inception"], download=False)
        return {"source": self.coco.source, "split": "val2014", "num_rows": len(self.coco.captions),
                **self.coco.identity, **(self.coco.read or {}), "num_prompts": len(self.docs()), "prompt_seed": self.prompt_seed,
                "prompts_file": self.args["prompts_file"], "fid_ref_resize": self.recipe,
                "prompt_ids_sha256": hashlib.sha256(ids.encode()).hexdigest(), **fid.library_info(),
                "fid_reference": self.reference, "fid_image_size": self.ref_size,
                "inception_weights": str(weights) if weights else None,
                "inception_sha256": fid.file_sha256(weights) if weights else None}

    def build_request(self, doc: Doc) -> Request:
        return Request(doc.doc_id, doc.row["caption"])

    def process(self, doc: Doc, output: Any) -> dict[str, Any]:
        return {"image_id": doc.row["image_id"], "caption_index": doc.row["caption_index"], "image": output}

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        """FID of the generated images (failed samples left out and counted) against the reference."""
        import torch

        fid.require()
        args = self.args
        device = args["fid_device"] or ("cuda" if torch.cuda.is_available() else "cpu")
        resize = args["fid_resize"] or fid.default_resize(device)
        opts = {"size": self.ref_size, "recipe": self.recipe, "device": device, "batch_size": args["fid_batch_size"],
                "workers": args["fid_workers"] or min(8, os.cpu_count() or 1), "resize": resize}
        done = [r for r in records if r["image"]]
        if self.run_dir is None:
            raise OmnibenchError("coco_fid30k: run folder unknown, so the generated images cannot be found")
        weights = fid.inception_path(args["inception"])
        model = fid.load_inception(weights, device)
        ref_ids = sorted(self.coco.captions) if self.reference == "all" else sorted({r["image_id"] for r in records})
        key = {"reference": "coco_val2014", **self.coco.identity, "image_ids_sha256": hashlib.sha256(
                   ",".join(map(str, ref_ids)).encode()).hexdigest(), "size": self.ref_size, "recipe": self.recipe,
               "resize": resize, **fid.library_info(),
               "inception_sha256": fid.file_sha256(weights)}
        mu_ref, sigma_ref, n_ref = fid.cached_stats(
            key, lambda: fid.features(self.coco.reference_items(ref_ids), model, **opts,
                                      desc="FID reference features"))
        out = {"fid_images": float(len(done)), "fid_failed": float(len(records) - len(done)),
               "fid_reference_images": float(n_ref)}
        if len(done) < 2 or n_ref < 2:  # a covariance needs two samples on each side
            return {"fid": float("nan"), **out}
        feats = fid.features([self.run_dir / r["image"] for r in done], model, **opts,
                             desc="FID generated-image features")
        return {"fid": fid.frechet_distance(*fid.feature_stats(feats), mu_ref, sigma_ref), **out}
