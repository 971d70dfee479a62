"""OmniMamba on CPU: the plain-PyTorch SSD scan, recurrent decoding, LoRA routing, checkpoint names,
and both tasks end to end on the tiny preset."""
from __future__ import annotations

import os

import pytest
import torch

from omnibench.models.omnimamba import OmniMambaAdapter
from omnibench.models.omnimamba.adapter import mmu_prompt, sample_tokens
from omnibench.models.omnimamba.checkpoint import WEIGHTS_NAME, from_pretrained, save_pretrained, tiny_base_tokenizer, tiny_config
from omnibench.models.omnimamba.modeling_omnimamba import LoRALinear, OmniMamba, load_official_state_dict, official_state_dict
from omnibench.models.omnimamba.ssd import ssd_chunked, ssd_sequential
from omnibench.data import drawn_image
from omnibench.protocol import OmnibenchError, Request


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def model() -> OmniMamba:
    torch.manual_seed(0)
    return OmniMamba(tiny_config()).double().eval()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> OmniMambaAdapter:
    old = os.environ.get("OMNIBENCH_CACHE")
    os.environ["OMNIBENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield OmniMambaAdapter(preset="tiny")
    finally:
        os.environ.pop("OMNIBENCH_CACHE") if old is None else os.environ.__setitem__("OMNIBENCH_CACHE", old)


# --- the scan ------------------------------------------------------------------------------------
@pytest.mark.parametrize("length,chunk,groups", [(37, 8, 2), (16, 16, 1), (5, 16, 1), (64, 16, 4)])
def test_chunked_scan_equals_sequential_recurrence_in_float64(length, chunk, groups):
    g = torch.Generator().manual_seed(length)
    b, h, p, n = 2, 4, 3, 5
    f64 = dict(dtype=torch.float64, generator=g)
    x, B, C = torch.randn(b, length, h, p, **f64), torch.randn(b, length, groups, n, **f64), torch.randn(b, length, groups, n, **f64)
    dt, A, D = torch.rand(b, length, h, **f64), -torch.rand(h, **f64) * 3, torch.randn(h, **f64)
    s0 = torch.randn(b, h, p, n, **f64)
    y, s = ssd_chunked(x, dt, A, B, C, D, chunk, initial_state=s0)
    y_ref, s_ref = ssd_sequential(x, dt, A, B, C, D, initial_state=s0)
    assert rel(y, y_ref) < 1e-5 and rel(s, s_ref) < 1e-5
    assert y.dtype == torch.float64


def test_chunked_scan_is_not_trivially_equal_when_a_decay_is_dropped():
    # Guard on the test above: a scan that forgot the inter-chunk decay would differ by far more.
    g = torch.Generator().manual_seed(3)
    x, B, C = torch.randn(1, 32, 2, 2, generator=g, dtype=torch.float64), torch.randn(1, 32, 1, 3, generator=g, dtype=torch.float64), torch.randn(1, 32, 1, 3, generator=g, dtype=torch.float64)
    dt, A, D = torch.rand(1, 32, 2, generator=g, dtype=torch.float64), -torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    y_ref, _ = ssd_sequential(x, dt, A, B, C, D)
    y_no_decay, _ = ssd_sequential(x, dt, A * 0, B, C, D)
    assert rel(y_no_decay, y_ref) > 1e-2


def test_bf16_scan_rounds_the_scores_where_the_triton_kernel_does():
    # One chunk, zero state: y_i = sum_j bf16(C_i.B_j exp(a_i - a_j) dt_j) x_j + D x_i, as mamba-ssm's
    # chunk-scan kernel feeds its tensor-core dot; the bf16 path must round there and only there.
    g = torch.Generator().manual_seed(4)
    l, h, p, n = 12, 2, 4, 8
    x = torch.randn(1, l, h, p, generator=g).bfloat16()
    B, C = torch.randn(1, l, 1, n, generator=g).bfloat16(), torch.randn(1, l, 1, n, generator=g).bfloat16()
    dt, A, D = torch.rand(1, l, h, generator=g) * 0.5, -torch.rand(h, generator=g) * 2, torch.randn(h, generator=g)
    y, _ = ssd_chunked(x, dt, A, B, C, D, chunk_size=16)
    a = torch.cumsum(dt * A, dim=1)[0]  # (l, h)
    cb = C[0, :, 0].float() @ B[0, :, 0].float().T  # (i, j)
    decay = torch.exp(a[:, None, :] - a[None, :, :]) * torch.ones(l, l).tril()[..., None]
    scores = (cb[..., None] * decay * dt[0][None]).bfloat16().float()
    expected = torch.einsum("ijh,jhp->ihp", scores, x[0].float()) + D[:, None] * x[0].float()
    assert (y[0] - expected).abs().max() < 1e-5
    unrounded = torch.einsum("ijh,jhp->ihp", cb[..., None] * decay * dt[0][None], x[0].float()) + D[:, None] * x[0].float()
    assert (y[0] - unrounded).abs().max() > 1e-4  # the rounding is really there


def interpreted(script: str) -> float:
    """Run `script` with Triton's CPU interpreter (which must be switched on before Triton is imported,
    hence the subprocess) and return the number it prints last."""
    pytest.importorskip("triton")
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.getcwd()}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return float(run.stdout.strip().splitlines()[-1])


_FUSED_CHECK = """
import sys, torch
import torch.nn.functional as F
from omnibench.models.omnimamba import fused
from omnibench.models.omnimamba.modeling_omnimamba import GatedRMSNorm, RMSNorm, add_rms_norm
worst = 0.0
for rows, has_residual in [(1, False), (1, True), (3, True)]:
    g = torch.Generator().manual_seed(rows)
    k, n = 96, 37  # K not a power of two, N not a multiple of the block
    x, z = torch.randn(rows, k, generator=g), torch.randn(rows, k, generator=g)
    residual = torch.randn(rows, k, generator=g) if has_residual else None
    w = torch.randn(n, k, generator=g) / k ** 0.5
    norm, gated = RMSNorm(k, 1e-5), GatedRMSNorm(k, 1e-5, 1)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
        gated.weight.uniform_(0.5, 1.5, generator=g)
        # The model sends only batch 1 to these kernels (MAX_ROWS); they take up to KERNEL_ROWS rows.
        assert fused.fused_available(x, residual) == (rows == 1) and rows <= fused.KERNEL_ROWS
        for config in [(4, 2), (16, 4)]:
            out, res = fused.norm_linear(x, residual, norm.weight, 1e-5, w, config=config)
            h, res_ref = add_rms_norm(x, residual, norm, prenorm=True)
            assert torch.equal(res, res_ref), "residual"
            worst = max(worst, (out - F.linear(h, w)).abs().max().item())
            out = fused.gated_norm_linear(x, z, gated.weight, 1e-5, w, config=config)
            worst = max(worst, (out - F.linear(gated(x, z), w)).abs().max().item())
print(worst)
"""


def test_fused_norm_gemv_kernels_equal_the_unfused_ops():
    """The Triton decode kernels, run by Triton's CPU interpreter, against the ops they replace, in fp32."""
    assert interpreted(_FUSED_CHECK) < 1e-5


_CONV_EPILOGUE_CHECK = """
import torch
from omnibench.models.omnimamba import fused
from omnibench.models.omnimamba.ssd import conv_update_triton
checked = 0
for dtype in (torch.float32, torch.bfloat16):
    for rows, block in ((1, 4), (3, 8), (2, 2)):
        g = torch.Generator().manual_seed(rows)
        k, lo, c, tail = 96, 24, 40, 12  # features: z | xBC, the conv channels | dt
        x, res = torch.randn(rows, k, generator=g).to(dtype), torch.randn(rows, k, generator=g)
        nw = (torch.rand(k, generator=g) + 0.5).to(dtype)
        w = (torch.randn(lo + c + tail, k, generator=g) / k ** 0.5).to(dtype)
        window = torch.randn(rows, c, 4, generator=g).to(dtype)
        cw, cb = torch.randn(c, 4, generator=g).to(dtype), torch.randn(c, generator=g).to(dtype)
        ref, ref_res = fused.norm_linear(x, res, nw, 1e-5, w, config=(block, 2))
        ref_window = window.clone()
        ref_conv = conv_update_triton(ref[:, lo:lo + c], ref_window, cw, cb)
        got_window = window.clone()
        got, got_res = fused.norm_linear(x, res, nw, 1e-5, w, config=(block, 2), conv=(got_window, cw, cb, lo))
        assert torch.equal(got_res, ref_res)
        assert torch.equal(got[:, :lo], ref[:, :lo]) and torch.equal(got[:, lo + c:], ref[:, lo + c:]), "z, dt raw"
        assert torch.equal(got[:, lo:lo + c], ref_conv), (dtype, rows, "conv output")
        assert torch.equal(got_window, ref_window), (dtype, rows, "window")
        assert not torch.equal(got_window, window)
        checked += 1
try:  # a program whose features straddle the conv range's edge is refused
    fused.norm_linear(x, res, nw, 1e-5, w, config=(16, 2), conv=(got_window, cw, cb, lo))
    raise SystemExit("BLOCK_N 16 with the conv range starting at 24 was not refused")
except AssertionError:
    pass
print(checked)
"""


def test_in_proj_conv_epilogue_equals_norm_linear_then_conv_update_bit_for_bit():
    """The in_proj GEMV with the conv update in its epilogue computes exactly what the GEMV followed by
    `conv_update_triton` computes, output and conv window, in fp32 and bf16, on 1 to 3 rows."""
    assert interpreted(_CONV_EPILOGUE_CHECK) == 6


_STATE_UPDATE_CHECK = """
import torch
import torch.nn.functional as F
from omnibench.models.omnimamba import fused
from omnibench.models.omnimamba.ssd import ssd_step

def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()

g = torch.Generator().manual_seed(0)
b, h, p, n, groups = 3, 4, 24, 16, 2  # headdim not a multiple of BLOCK_P, two heads per group
worst = 0.0
for state_dtype in (torch.float32, torch.bfloat16):
    proj = torch.randn(b, 300, generator=g)  # x, B, C, dt are strided views of one projection, as in a step
    x = proj[:, :h * p].unflatten(-1, (h, p))
    B = proj[:, 100:100 + groups * n].unflatten(-1, (groups, n))
    C = proj[:, 140:140 + groups * n].unflatten(-1, (groups, n))
    dt = proj[:, 200:200 + h]
    dt[0, 0] = 100.0  # past softplus's threshold, where it is the identity (and exp overflows fp32)
    A, D, dt_bias = -torch.rand(h, generator=g) * 4, torch.randn(h, generator=g), torch.randn(h, generator=g)
    start = torch.randn(b, h, p, n, generator=g).to(state_dtype)
    ref = start.to(torch.float32, copy=True)  # the step in fp32 from the same state, rounded nowhere
    y_ref = ssd_step(ref, x, F.softplus(dt + dt_bias), A, B, C, D)
    got = start.clone()
    y = fused.state_update(got, x, dt, A, B, C, D, dt_bias, config=(8, 2))
    assert got.dtype == state_dtype and y.dtype == x.dtype
    worst = max(worst, rel(y, y_ref))  # y comes from the fp32 state, before it is rounded
    if state_dtype == torch.float32:
        worst = max(worst, rel(got, ref))
    else:
        # Rounded once from the fp32 state: each value one of its two bf16 neighbours (the interpreter
        # rounds toward zero where the GPU and torch round to nearest).
        ulp = 2.0 ** (torch.floor(torch.log2(ref.abs())) - 7)
        assert ((got.float() - ref).abs() <= ulp).all(), "bf16 state"
print(worst)
"""


def test_state_update_kernel_equals_the_pytorch_step():
    """fused.state_update (softplus of dt + dt_bias, decay, input, readout, D skip) against `ssd_step`,
    with an fp32 state and with a bf16 one, on strided views as the decode step passes them."""
    assert interpreted(_STATE_UPDATE_CHECK) < 1e-5


_FUSED_STEP_CHECK = """
import torch
from omnibench.models.omnimamba import fused
from omnibench.models.omnimamba.checkpoint import tiny_config
from omnibench.models.omnimamba.modeling_omnimamba import DecodeState, OmniMamba

calls = []
for name in ("norm_linear", "state_update", "gated_norm_linear"):
    def wrapped(*args, _f=getattr(fused, name), _name=name, **kw):
        calls.append(_name + ("+conv" if kw.get("conv") is not None else ""))
        return _f(*args, **kw)
    setattr(fused, name, wrapped)

def rel(a, b):
    return ((a - b).norm() / b.norm()).item()

fused.DEFAULT_CONFIG = (32, 4)  # fewer programs for the interpreter to walk; 32 divides the conv range's bounds
torch.manual_seed(0)
model = OmniMamba(tiny_config()).eval()
worst = 0.0
batch = 2
for max_rows, route in ((8, "mmu"), (1, "t2i")):  # batch > MAX_ROWS: unfused GEMVs, still our state update
    fused.MAX_ROWS = max_rows
    g = torch.Generator().manual_seed(max_rows)
    ids = torch.randint(0, 60, (batch, 7), generator=g)
    embeds = model.with_mmu_positions(model.text_embeddings(ids)) if route == "mmu" else model.caption_embeddings(ids)
    start, _ = model.prefill(embeds, route)
    out = {}
    for fuse in (True, False):
        model.use_fused_decode = fuse
        state = DecodeState([t.clone() for t in start.conv], [t.clone() for t in start.ssm],
                            start.position.clone(), route)
        calls.clear()
        logits = torch.stack([model.step(state, ids[:, t]) for t in range(2)])
        out[fuse] = (logits, state)
        if fuse and batch <= fused.MAX_ROWS:
            assert calls[:4] == ["norm_linear+conv", "state_update", "gated_norm_linear", "norm_linear+conv"], calls
        elif fuse:
            assert calls == ["state_update"] * len(calls) and len(calls) == 2 * len(model.lm.backbone.layers), calls
        else:
            assert not calls
    (lf, sf), (lp, sp) = out[True], out[False]
    worst = max(worst, rel(lf, lp), *(rel(a, b) for a, b in zip(sf.conv + sf.ssm, sp.conv + sp.ssm)))
print(worst)
"""


def test_fused_decode_steps_equal_the_pytorch_steps():
    """Several whole OmniMamba steps through fused.py's kernels (three a layer; with more rows than the
    GEMVs take, the unfused GEMVs with fused.py's state update) against the plain-PyTorch steps, in fp32:
    logits and every layer's conv window and SSM state."""
    assert interpreted(_FUSED_STEP_CHECK) < 1e-5


_CONV_CHECK = """
import torch
from omnibench.models.omnimamba.modeling_omnimamba import causal_conv1d_silu
from omnibench.models.omnimamba.ssd import conv1d_triton
torch.manual_seed(0)
worst = 0.0
for b, l, c in ((2, 37, 200), (1, 3, 130), (3, 70, 64)):
    proj = torch.randn(b, l, c + 50)  # the conv input is a strided slice of a wider projection
    x = proj[..., 10:10 + c]
    w, bias = torch.randn(c, 1, 4), torch.randn(c)
    out = conv1d_triton(x.transpose(1, 2), w.squeeze(1), bias).transpose(1, 2)
    assert out.shape == (b, l, c) and out.is_contiguous()
    worst = max(worst, (out - causal_conv1d_silu(x, w, bias)).abs().max().item())
print(worst)
"""


_PERSISTENT_CHECK = """
import torch
from omnibench.models.omnimamba import persistent
from omnibench.models.omnimamba.checkpoint import tiny_config
from omnibench.models.omnimamba.modeling_omnimamba import DecodeState, OmniMamba

launches = []
real = persistent.layers_step
def counted(*args, **kw):
    launches.append(1)
    return real(*args, **kw)
persistent.layers_step = counted

def rel(a, b):
    return ((a - b).norm() / b.norm()).item()

torch.manual_seed(0)
model = OmniMamba(tiny_config()).eval()
worst = 0.0
# 4 programs: each takes several in_proj / out_proj tiles and (BLOCK_P 8) several state tiles a phase
for config, route in (((8, 4, 32, 8), "mmu"), ((4, 8, 8, 4), "t2i")):
    persistent.CONFIG = config
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 60, (1, 7), generator=g)
    embeds = model.with_mmu_positions(model.text_embeddings(ids)) if route == "mmu" else model.caption_embeddings(ids)
    start, _ = model.prefill(embeds, route)
    out = {}
    for name, persistent_decode, kernels in (("persistent", True, True), ("torch", False, False)):
        model.set_kernels(kernels)
        model.persistent_decode = persistent_decode
        state = DecodeState([t.clone() for t in start.conv], [t.clone() for t in start.ssm], start.position.clone(), route)
        out[name] = (torch.stack([model.step(state, ids[:, t]) for t in range(3)]), state)
    (lp, sp), (lt, st) = out["persistent"], out["torch"]
    worst = max(worst, rel(lp, lt), *(rel(a, b) for a, b in zip(sp.conv + sp.ssm, st.conv + st.ssm)))
assert len(launches) == 6, launches
print(worst)
"""


def test_persistent_decode_kernel_equals_the_pytorch_steps():
    """persistent.py's whole-stack kernel (off by default), run by Triton's interpreter one launch a phase,
    against the plain-PyTorch steps in fp32: three steps' logits and every layer's conv window and SSM
    state, on both routes, with tile sizes that give each of the 4 programs several tiles a phase."""
    assert interpreted(_PERSISTENT_CHECK) < 1e-5


def test_pipelined_persistent_variant_of_the_bench_equals_the_pytorch_steps():
    """bench.persistent_variants' `+pipelined` source (tile loops as tl.range with stages; the interpreter
    runs them as plain loops) still computes the PyTorch steps: its substitutions keep the kernel whole."""
    from bench.persistent_variants import variant_source

    src = variant_source("volatile+pipelined")
    assert src.count("tl.range(pid,") == 3 and "volatile=True" in src
    script = _PERSISTENT_CHECK.replace(
        "from omnibench.models.omnimamba import persistent\n",
        "from bench.persistent_variants import variant_module\n"
        "import omnibench.models.omnimamba.modeling_omnimamba as mm\n"
        "persistent = mm.persistent = variant_module('volatile+pipelined')\n")
    script = script.replace("model = OmniMamba(tiny_config()).eval()\n",
                            "model = OmniMamba(tiny_config()).eval()\nmodel._stack = persistent.Stack()\n")
    assert script.count("variant_module") == 2 and "persistent.Stack()" in script
    assert interpreted(script) < 1e-5


def test_triton_prefill_conv_equals_the_pytorch_conv():
    """The Triton prefill conv (used where causal-conv1d's CUDA extension is not built), run by Triton's
    CPU interpreter, against the PyTorch path: strided input, lengths shorter than the window, and
    channel counts that are not a multiple of the tile."""
    assert interpreted(_CONV_CHECK) < 1e-5


def test_chunked_causal_conv_equals_one_pass_and_the_torch_conv():
    from omnibench.models.omnimamba.modeling_omnimamba import causal_conv1d_silu

    g = torch.Generator().manual_seed(6)
    x, w, b = torch.randn(2, 23, 6, generator=g), torch.randn(6, 1, 4, generator=g), torch.randn(6, generator=g)
    conv = torch.nn.functional.conv1d(x.transpose(1, 2), w, b, padding=3, groups=6)[..., :23]
    ref = torch.nn.functional.silu(conv).transpose(1, 2)
    for chunk in (1, 2, 5, 23, 100):
        assert (causal_conv1d_silu(x, w, b, chunk=chunk) - ref).abs().max() < 1e-6


# --- recurrent decoding --------------------------------------------------------------------------
def test_mmu_decoding_from_the_state_equals_a_full_forward(model):
    cfg = model.config
    ids = torch.randint(0, cfg.vocab_size, (2, 41), generator=torch.Generator().manual_seed(0))
    full = model.logits(model(model.with_mmu_positions(model.text_embeddings(ids)), "mmu"), "mmu")
    prompt = 19  # crosses the chunk boundary (chunk 16) in the prefill and again while stepping
    state, logits = model.prefill(model.with_mmu_positions(model.text_embeddings(ids[:, :prompt])), "mmu")
    stepped = [logits]
    for t in range(prompt, ids.shape[1]):
        stepped.append(model.step(state, ids[:, t]))
    stepped = torch.stack(stepped, dim=1)
    assert rel(stepped, full[:, prompt - 1:]) < 1e-10
    assert state.position.tolist() == [41, 41]


def test_right_padded_batch_prefill_gives_each_row_its_own_state_and_logits(model):
    """One prefill of rows of different lengths (crossing chunk boundaries; one shorter than the conv
    window) equals each row read alone: logits, conv window, SSM state, position, and the next steps."""
    cfg = model.config
    lengths = [41, 17, 3, 32]
    rows = [model.with_mmu_positions(model.text_embeddings(
        torch.randint(0, cfg.vocab_size, (1, n), generator=torch.Generator().manual_seed(n))))[0] for n in lengths]
    padded = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=0.3)  # padding is never read
    state, logits = model.prefill(padded, "mmu", torch.tensor(lengths))
    read = [t.clone() for t in state.conv + state.ssm]
    token = torch.tensor([5, 6, 7, 8])
    after = model.step(state, token)
    for i, row in enumerate(rows):
        alone, first = model.prefill(row[None], "mmu")
        assert rel(logits[i], first[0]) < 1e-10
        for a, b in zip(read, alone.conv + alone.ssm):
            assert rel(a[i], b[0]) < 1e-10 or (a[i].abs().max() == 0 and b[0].abs().max() == 0)
        assert rel(after[i], model.step(alone, token[i:i + 1])[0]) < 1e-10
    assert state.position.tolist() == [n + 1 for n in lengths]


def test_t2i_decoding_uses_image_embeddings_and_positions_like_the_training_forward(model):
    cfg = model.config
    g = torch.Generator().manual_seed(1)
    caption = torch.randint(0, cfg.vocab_size, (1, cfg.caption_len + 4), generator=g)
    codes = torch.randint(0, cfg.image_vocab_size, (1, cfg.num_image_tokens), generator=g)
    cap = model.caption_embeddings(caption)
    # Upstream's training layout: [caption embeds ; image code embeds] + pos_embed[:, :L]
    img = model.lm.backbone.img_embeddings(codes) + model.lm.backbone.pos_embed[:, cap.shape[1]: cap.shape[1] + codes.shape[1]]
    full = model.logits(model(torch.cat([cap, img], 1), "t2i"), "t2i")
    state, logits = model.prefill(cap, "t2i")
    stepped = [logits] + [model.step(state, codes[:, i]) for i in range(codes.shape[1] - 1)]
    assert rel(torch.stack(stepped, 1), full[:, cap.shape[1] - 1: -1]) < 1e-10
    assert full.shape[-1] == cfg.image_vocab_size


# --- LoRA routing --------------------------------------------------------------------------------
def test_moving_the_model_drops_every_derived_tensor():
    """`derived` keys its cache by the sources' addresses and versions, which a parameter replaced by .to()
    can repeat (the GPU allocator reuses freed blocks); so .to() drops the cache of every module holding
    one, whichever module it is called on, and the next step recomputes from the new weights."""
    m = OmniMamba(tiny_config()).eval()
    mixer = m.lm.backbone.layers[0].mixer
    merged = mixer.in_proj.merged("mmu")
    mixer.A_fp32()
    assert "_derived" in mixer.in_proj.__dict__ and "_derived" in mixer.__dict__
    m.to(torch.float64)
    assert "_derived" not in mixer.in_proj.__dict__ and "_derived" not in mixer.__dict__
    again = mixer.in_proj.merged("mmu")
    assert again.dtype == torch.float64 and torch.allclose(again.float(), merged, atol=1e-6)
    mixer.in_proj.merged("t2i")
    mixer.to(torch.float32)  # on the submodule alone
    assert "_derived" not in mixer.in_proj.__dict__


def test_lora_linear_adds_only_the_chosen_branch():
    torch.manual_seed(0)
    lin = LoRALinear(6, 5, r=2, alpha=8).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    for route, other in (("mmu", "t2i"), ("t2i", "mmu")):
        a, b = getattr(lin, f"{route}_lora_A0").weight, getattr(lin, f"{route}_lora_B0").weight
        expected = x @ lin.weight.T + 4.0 * (x @ a.T) @ b.T
        assert torch.allclose(lin(x, route), expected)
        assert torch.allclose(lin.merged(route), lin.weight + 4.0 * b @ a)


def test_changing_one_routes_lora_moves_only_that_routes_outputs(model):
    ids = torch.randint(0, model.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(2))
    emb = model.with_mmu_positions(model.text_embeddings(ids))
    before = {r: model(emb, r).clone() for r in ("mmu", "t2i")}
    b = model.lm.backbone.layers[0].mixer.in_proj.t2i_lora_B0.weight
    saved = b.detach().clone()
    with torch.no_grad():
        b.add_(0.5)
    try:
        after = {r: model(emb, r) for r in ("mmu", "t2i")}
    finally:
        with torch.no_grad():
            b.copy_(saved)
    assert torch.equal(after["mmu"], before["mmu"])
    assert rel(after["t2i"], before["t2i"]) > 1e-3
    assert rel(before["mmu"], before["t2i"]) > 1e-3  # the two routes really are different functions


# --- checkpoint names ----------------------------------------------------------------------------
OFFICIAL_KEYS = [
    "vision_backbone.dino_featurizer.cls_token", "vision_backbone.dino_featurizer.reg_token",
    "vision_backbone.dino_featurizer.pos_embed", "vision_backbone.dino_featurizer.blocks.1.attn.qkv.weight",
    "vision_backbone.dino_featurizer.blocks.0.ls1.gamma", "vision_backbone.dino_featurizer.norm.weight",
    "vision_backbone.siglip_featurizer.patch_embed.proj.weight", "vision_backbone.siglip_featurizer.blocks.0.attn.qkv.bias",
    "vision_backbone.siglip_featurizer.attn_pool.latent", "vision_backbone.siglip_featurizer.attn_pool.kv.weight",
    "projector.projector.0.weight", "projector.projector.4.bias",
    "llm_backbone.vqvae.encoder.conv_blocks.0.downsample.conv.weight", "llm_backbone.vqvae.decoder.conv_blocks.0.attn.0.q.weight",
    "llm_backbone.vqvae.quantize.embedding.weight", "llm_backbone.vqvae.quantize.codebook_used",
    "llm_backbone.vqvae.post_quant_conv.weight",
    "llm_backbone.mamba.backbone.embedding.weight", "llm_backbone.mamba.backbone.mmu_pos_embed",
    "llm_backbone.mamba.backbone.pos_embed", "llm_backbone.mamba.backbone.caption_embed.cap_proj.fc1.weight",
    "llm_backbone.mamba.backbone.img_embeddings.word_embeddings.weight",
    "llm_backbone.mamba.backbone.img_embeddings.project_in.projector.2.weight",
    "llm_backbone.mamba.backbone.layers.1.norm.weight", "llm_backbone.mamba.backbone.layers.1.mixer.in_proj.weight",
    "llm_backbone.mamba.backbone.layers.0.mixer.in_proj.mmu_lora_A0.weight",
    "llm_backbone.mamba.backbone.layers.0.mixer.in_proj.t2i_lora_B0.weight",
    "llm_backbone.mamba.backbone.layers.0.mixer.conv1d.weight", "llm_backbone.mamba.backbone.layers.0.mixer.dt_bias",
    "llm_backbone.mamba.backbone.layers.0.mixer.A_log", "llm_backbone.mamba.backbone.layers.0.mixer.D",
    "llm_backbone.mamba.backbone.layers.0.mixer.norm.weight", "llm_backbone.mamba.backbone.layers.0.mixer.out_proj.weight",
    "llm_backbone.mamba.backbone.norm_f.weight", "llm_backbone.mamba.lm_head.weight", "llm_backbone.mamba.img_head.weight",
]


def test_official_state_dict_uses_upstream_names_and_shapes(model):
    sd = official_state_dict(model)
    assert set(OFFICIAL_KEYS) <= set(sd)
    assert not [k for k in sd if "q_proj" in k or "encoder.layer" in k or "position_embedding" in k]
    cfg = model.config
    assert sd["vision_backbone.dino_featurizer.pos_embed"].shape == (1, cfg.vision.num_patches, cfg.vision.dino_width)
    assert sd["vision_backbone.dino_featurizer.blocks.0.attn.qkv.weight"].shape == (3 * cfg.vision.dino_width, cfg.vision.dino_width)
    d_in = 2 * cfg.d_inner + 2 * cfg.d_state + cfg.nheads
    assert sd["llm_backbone.mamba.backbone.layers.0.mixer.in_proj.weight"].shape == (d_in, cfg.d_model)
    assert sd["llm_backbone.mamba.backbone.layers.0.mixer.in_proj.mmu_lora_A0.weight"].shape == (8, cfg.d_model)
    assert sd["llm_backbone.mamba.backbone.pos_embed"].shape == (1, cfg.num_image_tokens + 73, cfg.d_model)
    assert sd["llm_backbone.mamba.backbone.mmu_pos_embed"].shape == (1, 1500, cfg.d_model)
    # Tied tables, as upstream ties them.
    assert torch.equal(sd["llm_backbone.mamba.lm_head.weight"], sd["llm_backbone.mamba.backbone.embedding.weight"])


def test_checkpoint_round_trip_keeps_every_official_tensor_and_the_outputs(tmp_path):
    torch.manual_seed(1)
    original = OmniMamba(tiny_config()).eval()
    save_pretrained(original, tiny_base_tokenizer(), tmp_path)
    loaded, tok, sources = from_pretrained(str(tmp_path))
    assert sources == {}
    a, b = official_state_dict(original), official_state_dict(loaded)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert tok.convert_tokens_to_ids("<|mmu|>") == len(tiny_base_tokenizer()) + 1 + 5  # [PAD] then soi..mmu
    # Same vision features (the timm <-> transformers map is exact) and same language-model outputs.
    pixels = loaded.vision_backbone.preprocess([drawn_image(3, size=56)])
    with torch.no_grad():
        assert torch.allclose(original.image_features(pixels), loaded.image_features(pixels), atol=1e-6)
        emb = torch.randn(1, 9, original.config.d_model)
        assert torch.allclose(original(emb, "mmu"), loaded(emb, "mmu"), atol=1e-6)


# transformers before 5.18 (5.17 on the GPU machines) names DINOv2's attention as below; since 5.18 as
# attention.{q,k,v}_proj / attention.o_proj (read in transformers 5.17's modeling_dinov2_with_registers.py).
LEGACY_DINO_ATTENTION = {"attention.q_proj.": "attention.attention.query.", "attention.k_proj.": "attention.attention.key.",
                         "attention.v_proj.": "attention.attention.value.", "attention.o_proj.": "attention.output.dense."}


def test_the_tower_names_map_reads_and_writes_transformers_older_dinov2_attention_names():
    from omnibench.models.common.timm_names import dino_layout, hf_to_timm, timm_to_hf

    torch.manual_seed(3)
    model = OmniMamba(tiny_config()).eval()
    n = model.config.vision.dino_layers
    own = model.vision_backbone.dino_featurizer.state_dict()  # in the installed transformers' layout
    hf, legacy = {}, {}
    for key, val in own.items():
        for new, old in LEGACY_DINO_ATTENTION.items():
            key = key.replace(old, new)
        hf[key] = val
        for new, old in LEGACY_DINO_ATTENTION.items():
            key = key.replace(new, old)
        legacy[key] = val
    assert any(".attention.attention.query." in k for k in legacy) and legacy.keys() != hf.keys()
    assert dino_layout(hf) == "proj" and dino_layout(legacy) == "legacy"
    timm = hf_to_timm(hf, "dino", n)
    from_legacy = hf_to_timm(legacy, "dino", n)  # the checkpoint written under either version is the same
    assert timm.keys() == from_legacy.keys() and all(torch.equal(timm[k], from_legacy[k]) for k in timm)
    back = timm_to_hf(timm, "dino", n, "legacy")
    assert back.keys() == legacy.keys() and all(torch.equal(back[k], legacy[k]) for k in legacy)
    back = timm_to_hf(timm, "dino", n)
    assert back.keys() == hf.keys() and all(torch.equal(back[k], hf[k]) for k in hf)


@pytest.mark.parametrize("change,needle", [
    ("drop", "llm_backbone.mamba.backbone.layers.1.mixer.A_log"),
    ("extra", "llm_backbone.mamba.backbone.layers.0.mixer.in_proj.mmu_lora_A1.weight"),
    ("shape", "llm_backbone.mamba.backbone.mmu_pos_embed"),
])
def test_a_wrong_key_set_fails_and_names_the_key(model, change, needle):
    sd = dict(official_state_dict(model))
    if change == "drop":
        del sd[needle]
    elif change == "extra":
        sd[needle] = torch.zeros(8, model.config.d_model)
    else:
        sd[needle] = sd[needle][:, :10]
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")) as err:
        load_official_state_dict(model, sd)
    assert ("missing" if change == "drop" else "unexpected" if change == "extra" else "shape") in str(err.value)


def test_from_pretrained_reports_a_bad_checkpoint_with_its_path(tmp_path):
    torch.manual_seed(2)
    m = OmniMamba(tiny_config())
    save_pretrained(m, tiny_base_tokenizer(), tmp_path)
    sd = torch.load(tmp_path / WEIGHTS_NAME, weights_only=True)
    del sd["projector.projector.2.bias"]
    torch.save(sd, tmp_path / WEIGHTS_NAME)
    with pytest.raises(OmnibenchError, match=r"projector\.projector\.2\.bias") as err:
        from_pretrained(str(tmp_path))
    assert str(tmp_path) in str(err.value)


def test_missing_checkpoint_is_an_actionable_error(tmp_path):
    with pytest.raises(OmnibenchError, match="not found: /nowhere/omnimamba"):
        OmniMambaAdapter(pretrained="/nowhere/omnimamba")
    with pytest.raises(OmnibenchError, match=f"checkpoint folder {tmp_path} lacks {WEIGHTS_NAME}"):
        OmniMambaAdapter(pretrained=str(tmp_path))


# --- end to end on the tiny preset ---------------------------------------------------------------
def test_prompt_layouts_follow_upstream(adapter):
    assert mmu_prompt("Is there a cat?") == "USER: Is there a cat? ASSISTANT:"
    tok, n = adapter.tokenizer, adapter.model.config.caption_len
    ids = adapter.t2i_ids("a red cat")
    assert len(ids) == n + 4
    assert ids[:2] == [tok.convert_tokens_to_ids("<|t2i|>"), tok.convert_tokens_to_ids("<|sot|>")]
    assert ids[-2:] == [tok.convert_tokens_to_ids("<|eot|>"), tok.convert_tokens_to_ids("<|soi|>")]
    assert ids[2: n + 2] == [tok.pad_token_id] * (n - 3) + tok("a red cat").input_ids  # left-padded
    long_ids = adapter.t2i_ids(" ".join(["cat"] * 100))
    assert len(long_ids) == n + 4 and tok.pad_token_id not in long_ids  # cut to the first 68 tokens


def test_mmu_batch_answers_equal_one_by_one_answers(adapter):
    reqs = [Request("a", "what color is the square?", [drawn_image(1, size=56)], {"max_new_tokens": 6}),
            Request("b", "how many", [drawn_image(2, size=40, shape="circle")], {"max_new_tokens": 3}),
            Request("c", "describe the picture in detail please", [], {"max_new_tokens": 5})]
    batched = adapter.generate_text(reqs)
    alone = [adapter.generate_text([r])[0] for r in reqs]
    assert batched == alone
    assert all(isinstance(t, str) for t in batched)
    assert len(adapter.tokenizer(batched[1]).input_ids) <= 3


def test_batch_embeddings_are_each_prompts_layout_zero_padded(adapter):
    """One ids tensor for the batch (rows with and without an image, different lengths) gives, bit for bit,
    each prompt's [MMU][SOI] image [EOI][SOT] text embedded piece by piece (upstream's layout, zeros for a
    missing image) plus MMU positions, padded with zeros."""
    m = adapter.model
    feats = m.image_features(m.vision_backbone.preprocess([drawn_image(1, size=56), drawn_image(2, size=40)]))
    ids = [adapter.mmu_text_ids(q) for q in ("what color is the square?", "how many", "describe it in detail")]
    images = {0: feats[0:1], 2: feats[1:2]}
    got, lengths = adapter.mmu_batch_embeddings(ids, images)

    def by_hand(text, image):
        head = m.text_embeddings(torch.tensor([[adapter.ids["mmu"], adapter.ids["soi"]]]))
        tail = m.text_embeddings(torch.tensor([[adapter.ids["eoi"], adapter.ids["sot"], *text]]))
        image = torch.zeros(1, m.config.vision.num_patches, m.config.d_model) if image is None else image
        x = torch.cat([head, image.to(head.dtype), tail], dim=1)
        return (x + m.lm.backbone.mmu_pos_embed[:, : x.shape[1]])[0]
    alone = [by_hand(t, images.get(i)) for i, t in enumerate(ids)]
    assert lengths.tolist() == [len(e) for e in alone] and len(set(lengths.tolist())) == 3
    want = torch.nn.utils.rnn.pad_sequence(alone, batch_first=True)
    assert torch.equal(got, want) and not torch.equal(got[0], got[2])
    assert torch.equal(adapter.mmu_embeddings(ids[1], None)[0], alone[1])


def test_mmu_generation_reads_the_image(adapter):
    q = "what color is the square?"
    one = adapter.generate_text([Request("a", q, [drawn_image(1, size=56)], {"max_new_tokens": 4})])
    feats = adapter.model.image_features(adapter.model.vision_backbone.preprocess([drawn_image(1, size=56)]))
    emb_img = adapter.mmu_embeddings(q, feats)
    emb_other = adapter.mmu_embeddings(q, adapter.model.image_features(
        adapter.model.vision_backbone.preprocess([drawn_image(9, size=56, shape="circle")])))
    assert emb_img.shape[1] == 2 + adapter.model.config.vision.num_patches + 2 + len(adapter.tokenizer(mmu_prompt(q)).input_ids)
    _, l1 = adapter.model.prefill(emb_img, "mmu")
    _, l2 = adapter.model.prefill(emb_other, "mmu")
    assert not torch.allclose(l1, l2)
    assert one[0] == adapter.generate_text([Request("a", q, [drawn_image(1, size=56)], {"max_new_tokens": 4})])[0]


def test_sampling_follows_upstream_top_k_rules():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0], [3.0, 0.0, 0.0, 2.0]])
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    assert sample_tokens(logits, 1.0, 1, gens).tolist() == [1, 0]
    draws = torch.stack([sample_tokens(logits, 5.0, 2, gens) for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {1, 3} and set(draws[:, 1].tolist()) == {0, 3}


def test_t2i_draws_deterministic_images_of_the_vq_size(adapter):
    reqs = [Request("x", "a red cat", seed=1), Request("y", "a dog on a bed", seed=2)]
    imgs = adapter.generate_images(reqs)
    side = int(adapter.model.config.num_image_tokens ** 0.5) * 2 ** (len(adapter.model.config.vq.ch_mult) - 1)
    assert [i.size for i in imgs] == [(side, side)] * 2 and imgs[0].mode == "RGB"
    assert [i.tobytes() for i in adapter.generate_images(reqs)] == [i.tobytes() for i in imgs]
    codes = adapter.generate_image_tokens(reqs)
    assert codes.shape == (2, adapter.model.config.num_image_tokens)
    assert int(codes.max()) < adapter.model.config.image_vocab_size


def test_t2i_sampling_is_seeded_per_request(adapter):
    saved = adapter.top_k, adapter.temperature
    adapter.top_k, adapter.temperature = 0, 1.0
    try:
        a = adapter.generate_image_tokens([Request("x", "a red cat", seed=7)])
        b = adapter.generate_image_tokens([Request("x", "a red cat", seed=7), Request("y", "a red cat", seed=8)])
    finally:
        adapter.top_k, adapter.temperature = saved
    assert torch.equal(a[0], b[0])  # the same seed draws the same image whatever the batch
    assert not torch.equal(b[0], b[1])


def test_cfg_doubles_the_batch_with_the_null_caption(adapter):
    adapter.cfg_scale = 3.0
    try:
        guided = adapter.generate_image_tokens([Request("x", "a red cat", seed=1)])
    finally:
        adapter.cfg_scale = 1.0
    plain = adapter.generate_image_tokens([Request("x", "a red cat", seed=1)])
    assert guided.shape == plain.shape and not torch.equal(guided, plain)


def test_speed_sweep_api_prefill_then_decode_step(adapter):
    ids = torch.randint(0, 100, (1, 30), generator=torch.Generator().manual_seed(5))
    state = adapter.prefill(ids)
    nxt = state.logits.argmax(-1)
    logits = adapter.decode_step(state, nxt)
    m = adapter.model
    full = m.logits(m(m.with_mmu_positions(m.text_embeddings(torch.cat([ids, nxt[:, None]], 1))), "mmu"), "mmu")
    assert torch.allclose(logits, full[:, -1], atol=1e-4)
    assert int(state.position) == 31


def test_modes_pick_the_decode_path(adapter):
    # best: CUDA-graph steps with the norms fused into the GEMVs; as_published: upstream's eager ops.
    assert adapter.model.use_cuda_graphs and adapter.model.use_fused_decode
    eager = OmniMambaAdapter(preset="tiny", mode="as_published")
    assert not eager.model.use_cuda_graphs and not eager.model.use_fused_decode
    assert OmniMambaAdapter(preset="tiny", fused_decode="false").model.use_fused_decode is False


def test_ssm_state_is_kept_in_the_model_dtype_as_upstream_unless_float32_is_asked():
    torch.manual_seed(0)
    m = OmniMamba(tiny_config()).to(torch.bfloat16).eval()
    ids = torch.randint(0, m.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(3))
    logits = {}
    for choice, dtype in (("model", torch.bfloat16), ("float32", torch.float32)):
        m.ssm_state_dtype = choice
        state, _ = m.prefill(m.with_mmu_positions(m.text_embeddings(ids)), "mmu")
        assert {t.dtype for t in state.ssm} == {dtype} and {t.dtype for t in state.conv} == {torch.bfloat16}
        logits[choice] = m.step(state, ids[:, -1])
    assert rel(logits["model"], logits["float32"]) < 5e-2  # the same model, its state rounded or not
    adapter = OmniMambaAdapter(preset="tiny", ssm_state="float32")
    assert adapter.model.ssm_state_dtype == "float32" and adapter.speed_settings()["ssm_state"] == "float32"
    assert OmniMambaAdapter(preset="tiny").model.ssm_state_dtype == "model"
    assert OmniMambaAdapter.resolved_config("auto", {"ssm_state": "float32"}) != OmniMambaAdapter.resolved_config("auto", {})


def test_images_are_resized_once_on_the_host_and_normalised_per_tower_as_timm_does():
    """Host: one bicubic resize to uint8; device: x / 255, minus mean, over std in float32 for each tower,
    bit for bit what timm's ToTensor + Normalize give on the resized image."""
    import numpy as np
    from PIL import Image
    from omnibench.models.omnimamba.vision import (DINO_MEAN, DINO_STD, SIGLIP_MEAN, SIGLIP_STD, normalised,
                                                   resized)
    img = drawn_image(4, size=50).resize((61, 47))
    pixels = resized(img, 28)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 28, 28)
    ref_resized = np.asarray(img.resize((28, 28), Image.BICUBIC), dtype=np.float32) / 255.0
    for mean, std in ((DINO_MEAN, DINO_STD), (SIGLIP_MEAN, SIGLIP_STD)):
        ref = torch.from_numpy((ref_resized - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).permute(2, 0, 1)
        assert torch.equal(normalised(pixels[None], mean, std)[0], ref)


def test_towers_skip_their_last_block_and_give_upstreams_second_to_last_output_exactly():
    """Upstream runs every block and keeps the second-to-last one's output; `forward` does not run the last
    block (a hook on it never fires) and gives the same tensor bit for bit; the blocks are all back after."""
    from omnibench.models.omnimamba.vision import (DINO_MEAN, DINO_STD, SIGLIP_MEAN, SIGLIP_STD, DinoSigLIPBackbone,
                                                   VisionConfig, normalised)

    torch.manual_seed(0)
    cfg = VisionConfig(image_size=28, patch_size=14, dino_width=16, dino_layers=3, dino_heads=2, siglip_width=16,
                       siglip_layers=3, siglip_heads=2, siglip_mlp=32)
    tower = DinoSigLIPBackbone(cfg).eval()
    keys = list(tower.state_dict())
    last = [tower.dino_featurizer.encoder.layer[-1], getattr(tower.siglip_featurizer, "vision_model", tower.siglip_featurizer).encoder.layers[-1]]
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in last]
    pixels = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    with torch.no_grad():  # upstream's way: every block, transformers' hidden_states[-2] of each tower
        dtype = torch.float32
        dino = tower.dino_featurizer(pixel_values=normalised(pixels, DINO_MEAN, DINO_STD).to(dtype), output_hidden_states=True)
        sig = tower.siglip_featurizer(pixel_values=normalised(pixels, SIGLIP_MEAN, SIGLIP_STD).to(dtype),
                                      output_hidden_states=True)
        reference = torch.cat([dino.hidden_states[-2][:, 1 + cfg.dino_registers:], sig.hidden_states[-2]], dim=2)
        calls.clear()
        fast = tower(pixels)
        assert not calls
        full = tower(pixels, run_last_block=True)
    assert len(calls) == 2
    assert fast.shape == (2, 4, 32) and torch.equal(fast, reference) and torch.equal(full, reference)
    assert list(tower.state_dict()) == keys
    for h in hooks:
        h.remove()


def test_siglip_tower_uses_the_exact_erf_gelu_as_upstream_timm():
    """timm's vit_so400m_patch14_siglip_384 (upstream's tower) has nn.GELU(): erf, not tanh. On x = 1 the
    two differ by 1.5e-4, far above float64 rounding: an MLP made an identity around its activation shows it."""
    import math

    import torch

    from omnibench.models.omnimamba.vision import DinoSigLIPBackbone, VisionConfig

    cfg = VisionConfig(image_size=28, patch_size=14, dino_width=8, dino_layers=1, dino_heads=2, siglip_width=8,
                       siglip_layers=1, siglip_heads=2, siglip_mlp=8)
    mlp = DinoSigLIPBackbone(cfg).siglip_featurizer.encoder.layers[0].mlp.double()
    with torch.no_grad():
        for lin in (mlp.fc1, mlp.fc2):
            lin.weight.copy_(torch.eye(8, dtype=torch.float64))
            lin.bias.zero_()
    out = mlp(torch.ones(1, 8, dtype=torch.float64))
    exact = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    tanh = 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (1 + 0.044715)))
    assert abs(exact - tanh) > 1e-4
    assert torch.allclose(out, torch.full_like(out, exact), atol=1e-12, rtol=0)


def _byte_ids(text: str) -> list[int]:
    """Ids of a one-token-per-byte BPE tokenizer (models.common.presets.byte_bpe_tokenizer), worked out
    from the GPT-2 byte alphabet itself: printable bytes stand for themselves, space is 'Ġ', newline 'Ċ'."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    alphabet = sorted(table.values())
    return [alphabet.index(table[b]) for b in text.encode()]


@pytest.mark.parametrize("template, text", [
    ("inference", "USER: Is there a cat? ASSISTANT:"),
    ("training", "In: Is there a cat?\nOut: "),
])
def test_prompt_templates_token_for_token(template, text):
    from omnibench.models.common.presets import byte_bpe_tokenizer
    from omnibench.models.omnimamba.adapter import mmu_prompt

    tok = byte_bpe_tokenizer([], bos="<|endoftext|>", eos="<|endoftext|>")
    ids = tok(mmu_prompt(" <image>\nIs there a cat?" if template == "training" else "Is there a cat?", template)).input_ids
    assert ids == _byte_ids(text)
    if template == "training":  # the trailing space is a token of its own, as in the training data
        assert ids[-1] == _byte_ids(" ")[0] and len(ids) == len(text)


def test_prompt_argument_reaches_the_model_input_and_the_run_identity():
    from omnibench.models.omnimamba import OmniMambaAdapter

    adapter = OmniMambaAdapter(preset="tiny", prompt="training")
    assert adapter.mmu_text_ids("Is it red?") == adapter.tokenizer("In: Is it red?\nOut: ").input_ids
    assert adapter.mmu_text_ids("Is it red?") != OmniMambaAdapter(preset="tiny").mmu_text_ids("Is it red?")
    assert OmniMambaAdapter.resolved_config("auto", {"prompt": "training"}) != \
        OmniMambaAdapter.resolved_config("auto", {})


def _checkpoint_without(tmp_path, prefix, seed=5):
    torch.manual_seed(seed)
    original = OmniMamba(tiny_config()).eval()
    save_pretrained(original, tiny_base_tokenizer(), tmp_path / "ckpt")
    sd = official_state_dict(original)
    torch.save({k: v for k, v in sd.items() if not k.startswith(prefix)}, tmp_path / "ckpt" / WEIGHTS_NAME)
    return original, {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def test_a_checkpoint_lacking_the_vq_loads_it_from_its_own_published_file_and_says_so(tmp_path, caplog):
    original, vq = _checkpoint_without(tmp_path, "llm_backbone.vqvae.")
    torch.save({"model": vq}, tmp_path / "vq_ds16_t2i.pt")  # LlamaGen's layout: {"model": state dict}
    with caplog.at_level("WARNING", logger="omnibench"):
        loaded, _, sources = from_pretrained(str(tmp_path / "ckpt"), sources={"vq_weights": str(tmp_path / "vq_ds16_t2i.pt")})
    assert sources == {"llm_backbone.vqvae": str(tmp_path / "vq_ds16_t2i.pt")}
    assert "lacks llm_backbone.vqvae: loaded it from" in caplog.text
    a, b = official_state_dict(original), official_state_dict(loaded)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_lacking_a_tower_without_its_weights_is_refused_naming_the_argument(tmp_path):
    _checkpoint_without(tmp_path, "vision_backbone.siglip_featurizer.")
    with pytest.raises(OmnibenchError, match=r"lacks the whole vision_backbone\.siglip_featurizer submodule .* "
                                             r"pass --model_args siglip_weights=<file>") as err:
        from_pretrained(str(tmp_path / "ckpt"), sources={"siglip_weights": str(tmp_path / "nowhere.bin")})
    assert "\n" not in str(err.value)


def test_a_tower_in_open_clip_layout_with_a_larger_position_grid_is_unwrapped_and_resampled(tmp_path):
    from omnibench.models.omnimamba.checkpoint import resample_pos_embed

    original, tower = _checkpoint_without(tmp_path, "vision_backbone.dino_featurizer.")
    rows = tower["pos_embed"].shape[1]
    side = int(rows ** 0.5)
    # A published grid 2 larger per side, wrapped as open_clip wraps timm towers.
    big = torch.nn.functional.interpolate(tower["pos_embed"].reshape(1, side, side, -1).permute(0, 3, 1, 2),
                                          size=(side + 2, side + 2), mode="bilinear").permute(0, 2, 3, 1)
    published = {**tower, "pos_embed": big.reshape(1, (side + 2) ** 2, -1)}
    torch.save({"visual.trunk." + k: v for k, v in published.items()}, tmp_path / "dino.bin")
    loaded, _, sources = from_pretrained(str(tmp_path / "ckpt"), sources={"dino_weights": str(tmp_path / "dino.bin")})
    got = official_state_dict(loaded)["vision_backbone.dino_featurizer.pos_embed"]
    assert got.shape == tower["pos_embed"].shape
    assert torch.equal(got, resample_pos_embed(published["pos_embed"], rows))
    assert torch.equal(official_state_dict(loaded)["vision_backbone.dino_featurizer.blocks.0.attn.qkv.weight"],
                       tower["blocks.0.attn.qkv.weight"])
    # The resampler itself: the identity at the same size, and a constant field stays constant.
    assert torch.equal(resample_pos_embed(tower["pos_embed"], rows), tower["pos_embed"])
    flat = torch.ones(1, 16, 3)
    assert torch.allclose(resample_pos_embed(flat, 9), torch.ones(1, 9, 3), atol=1e-5)


def test_a_checkpoint_lacking_part_of_a_submodule_stays_a_strict_error(tmp_path):
    _checkpoint_without(tmp_path, "llm_backbone.vqvae.quant_conv.weight")
    with pytest.raises(OmnibenchError, match=r"missing key\(s\) llm_backbone\.vqvae\.quant_conv\.weight"):
        from_pretrained(str(tmp_path / "ckpt"), sources={"vq_weights": "/nowhere"})


def test_prefill_with_the_lora_merged_equals_the_separate_branch(model):
    """merge_lora (mode=best) reads in_proj as one GEMM on W + s B A: in float64 the same function as
    upstream's separate branch, for each route's own LoRA (non-zero here, so a branch left out or the
    other route's would show)."""
    import copy

    model = copy.deepcopy(model)  # the module's fixture stays as it was
    ids = torch.randint(0, model.config.vocab_size, (2, 23), generator=torch.Generator().manual_seed(3))
    embeds = model.with_mmu_positions(model.text_embeddings(ids))
    g = torch.Generator().manual_seed(4)
    for layer in model.lm.backbone.layers:
        for route in ("mmu", "t2i"):
            b = getattr(layer.mixer.in_proj, f"{route}_lora_B0").weight
            b.data = torch.randn(b.shape, generator=g, dtype=b.dtype) * 0.05
    with torch.inference_mode():
        for route in ("mmu", "t2i"):
            apart = model(embeds, route)
            model.set_merged_lora(True)
            merged = model(embeds, route)
            model.set_merged_lora(False)
            assert (merged - apart).abs().max() < 1e-10 * apart.abs().max()
        assert (model(embeds, "mmu") - model(embeds, "t2i")).abs().max() > 1e-3


def test_best_mode_merges_the_lora_and_as_published_does_not():
    best = OmniMambaAdapter(preset="tiny")
    published = OmniMambaAdapter(preset="tiny", mode="as_published")
    forced = OmniMambaAdapter(preset="tiny", merge_lora="false")
    assert best.speed_settings()["merged_lora_prefill"] is True
    assert published.speed_settings()["merged_lora_prefill"] is False
    assert forced.speed_settings()["merged_lora_prefill"] is False


def test_graphed_t2i_prefill_hands_out_copies_that_later_prefills_leave_alone(monkeypatch):
    """The T2I caption prefill replays one graph per shape over static buffers: each call returns the
    state and logits a plain prefill gives, as copies that the next replay (another caption) does not
    overwrite; switching the LoRA path drops the graph. Run here with a stand-in graph whose replay
    re-runs the recorded function into the same buffers, as a CUDA graph writes into its own."""
    from omnibench.models.omnimamba import modeling_omnimamba

    class Replay:
        def __init__(self, record, out):
            self.record, self.out = record, out

        def replay(self):
            self.out.copy_(self.record())
    captured = []

    def capture(self, record, warm_up, device):
        warm_up()
        out = record()
        captured.append(out)
        return Replay(record, out), out
    monkeypatch.setattr(modeling_omnimamba.GraphPool, "capture", capture)
    monkeypatch.setattr(modeling_omnimamba, "use_kernels", lambda device: True)
    torch.manual_seed(0)
    m = OmniMamba(tiny_config()).double().eval()
    m.set_kernels(False)  # the plain path inside, CPU
    m.use_cuda_graphs = True
    ids = [torch.randint(0, 60, (2, m.config.caption_len + 4), generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    first, logits_first = m.prefill(m.caption_embeddings(ids[0]), "t2i")
    second, logits_second = m.prefill(m.caption_embeddings(ids[1]), "t2i")
    assert len(captured) == 1  # one shape, one graph
    m.use_cuda_graphs = False
    for (state, logits), caption in zip(((first, logits_first), (second, logits_second)), ids):
        want, want_logits = m.prefill(m.caption_embeddings(caption), "t2i")
        assert torch.equal(logits, want_logits)
        assert all(torch.equal(a, b) for a, b in zip(state.tensors(), want.tensors()))
    assert not torch.equal(logits_first, logits_second)
    m.use_cuda_graphs = True
    m.set_merged_lora(True)
    m.prefill(m.caption_embeddings(ids[0]), "t2i")
    assert len(captured) == 2  # recorded again on the merged path
