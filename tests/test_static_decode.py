"""The static-KV-cache decoder (models/common/static_decode.py) on both backbones it serves, Show-o's Phi (q/k
LayerNorm, partial rotary) and JanusFlow's Llama, in float32 on CPU: its logits equal the model's own full
forward over the same sequence at every step, across the buffer boundary where the cache grows; the
mask opens exactly one slot per step; a graph warm-up step leaves no trace."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from omnibench.models.janusflow.modeling_janusflow import llama_last_logits
from omnibench.models.showo.checkpoint import add_task_tokens, tiny_base_tokenizer
from omnibench.models.showo.modeling_showo import Showo, ShowoConfig
from omnibench.models.common.static_decode import ALIGN, StaticDecoder, padded_causal_mask, speed_context_ids

VOCAB = 300


@pytest.fixture(scope="module")
def phi():
    torch.manual_seed(0)
    cfg = ShowoConfig(vocab_size=VOCAB, llm_vocab_size=200, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=128)
    model = Showo(cfg)
    for m in model.modules():  # PyTorch's default init, not transformers' N(0, 0.02): O(1) logits, so a
        if hasattr(m, "reset_parameters"):  # wrong step cannot hide under atol
            m.reset_parameters()
    return model.eval()


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, initializer_range=0.1,
                      attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).eval()


def phi_decoder(model: Showo, budget: int, **kw) -> StaticDecoder:
    cfg, w = model.config, model.showo.lm_head.weight
    return StaticDecoder(lambda ids, pos, attend: model.logits(model.run(ids, pos, attend)[:, -1]),
                         cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim, w.device, w.dtype, budget, **kw)


def llama_decoder(lm: LlamaForCausalLM, budget: int, **kw) -> StaticDecoder:
    head_dim, w = lm.config.hidden_size // lm.config.num_attention_heads, lm.lm_head.weight
    return StaticDecoder(lambda ids, pos, attend: llama_last_logits(lm, ids, pos, attend), lm.config.num_hidden_layers,
                         lm.config.num_key_value_heads, head_dim, w.device, w.dtype, budget, **kw)


def phi_reference(model: Showo, seq: torch.Tensor) -> torch.Tensor:
    return model(seq, None)[:, -1]  # upstream's forward: every position, no cache


def llama_reference(lm: LlamaForCausalLM, seq: torch.Tensor) -> torch.Tensor:
    return lm(input_ids=seq).logits[:, -1].float()


BACKBONES = {"phi": (phi_decoder, phi_reference), "llama": (llama_decoder, llama_reference)}


@pytest.mark.parametrize("name", BACKBONES)
@torch.inference_mode()
def test_static_decode_equals_the_full_forward_at_every_step_across_the_buffer_boundary(name, request):
    model = request.getfixturevalue(name)
    make, reference = BACKBONES[name]
    gen = torch.Generator().manual_seed(1)
    n = ALIGN - 4  # capacity round_up(n + 1, ALIGN) = ALIGN: the 5th step must grow the buffers
    seq = torch.randint(0, VOCAB, (2, n), generator=gen)
    dec = make(model, budget=1)
    logits = dec.prefill(seq, torch.arange(n).expand(2, n))
    want = reference(model, seq)
    assert want.std() > 0.1  # logits of a real scale
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
    assert dec.capacity == ALIGN
    for step in range(7):
        token = torch.randint(0, VOCAB, (2,), generator=gen)
        seq = torch.cat([seq, token[:, None]], 1)
        got = dec.step(token)
        torch.testing.assert_close(got, reference(model, seq), rtol=1e-5, atol=1e-5)
    assert dec.length == n + 7 and dec.capacity > ALIGN


@torch.inference_mode()
def test_left_padded_rows_decode_as_if_alone(llama):
    """Row 0 is left-padded by 3: its logits at every step equal those of its real tokens alone."""
    gen = torch.Generator().manual_seed(2)
    real = torch.randint(0, VOCAB, (1, 5), generator=gen)
    other = torch.randint(0, VOCAB, (1, 8), generator=gen)
    ids = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), real], 1), other])
    valid = torch.ones(2, 8, dtype=torch.bool)
    valid[0, :3] = False
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    dec = llama_decoder(llama, budget=4)
    logits = dec.prefill(ids, positions, valid=valid, mask=padded_causal_mask(valid))
    torch.testing.assert_close(logits[0], llama_reference(llama, real)[0], rtol=1e-5, atol=1e-5)
    for _ in range(3):
        token = torch.randint(0, VOCAB, (2,), generator=gen)
        real = torch.cat([real, token[:1, None]], 1)
        torch.testing.assert_close(dec.step(token)[0], llama_reference(llama, real)[0], rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_the_mask_opens_one_slot_per_step_and_keeps_its_contents_when_the_buffers_grow(phi):
    n = ALIGN - 2
    dec = phi_decoder(phi, budget=1)
    dec.prefill(torch.randint(0, VOCAB, (1, n)), torch.arange(n)[None])
    open_slots = lambda: int((dec.mask == 0).sum())  # noqa: E731
    assert dec.mask.shape == (1, 1, 1, ALIGN) and open_slots() == n and torch.isinf(dec.mask[..., n:]).all()
    dec.step(torch.tensor([3]))
    dec.step(torch.tensor([4]))  # fills the last slot of the buffer
    assert dec.length == dec.capacity == ALIGN and open_slots() == ALIGN and int(dec.position) == ALIGN
    keys = dec.k[1].clone()
    dec.step(torch.tensor([5]))  # no slot left: grow, then write at slot ALIGN
    assert dec.capacity > ALIGN and dec.mask.shape[-1] == dec.capacity
    assert open_slots() == ALIGN + 1 and torch.isinf(dec.mask[..., ALIGN + 1:]).all()
    assert torch.equal(dec.k[1][:, :, :ALIGN], keys)
    assert dec.k[1][:, :, ALIGN].abs().sum() > 0 and dec.k[1][:, :, ALIGN + 1:].abs().sum() == 0
    assert int(dec.positions) == ALIGN + 1


@torch.inference_mode()
def test_a_graph_warmup_step_leaves_no_trace(phi):
    """The CUDA-graph capture runs warm-up steps for real; on CPU, the same rewind is checked."""
    gen = torch.Generator().manual_seed(3)
    seq = torch.randint(0, VOCAB, (1, 10), generator=gen)
    dec = phi_decoder(phi, budget=8)
    dec.prefill(seq, torch.arange(10)[None])
    before = (dec.mask.clone(), dec.position.clone(), dec.positions.clone())
    dec.token.fill_(42)
    dec._step_and_rewind()
    dec._step_and_rewind()
    assert all(torch.equal(a, b) for a, b in zip(before, (dec.mask, dec.position, dec.positions)))
    token = torch.tensor([7])
    torch.testing.assert_close(dec.step(token), phi_reference(phi, torch.cat([seq, token[:, None]], 1)),
                               rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_the_step_reads_no_tensor_value_on_the_host():
    """CUDA graph capture forbids host syncs (.item(), bool(tensor), data-dependent shapes); the meta
    device has no values at all, so a step that runs there has none."""
    with torch.device("meta"):
        models = {"phi": Showo(ShowoConfig(vocab_size=VOCAB, llm_vocab_size=200, hidden_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, intermediate_size=128)),
                  "llama": LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                                        num_hidden_layers=2, num_attention_heads=4,
                                                        num_key_value_heads=4))}
    for name, model in models.items():
        dec = BACKBONES[name][0](model, budget=1)
        assert dec.device.type == "meta"
        ids = torch.zeros(1, ALIGN - 2, dtype=torch.long, device="meta")
        dec.prefill(ids, torch.arange(ALIGN - 2, device="meta")[None])
        dec._step_and_rewind()
        for _ in range(4):  # through a growth
            assert dec.step(torch.zeros(1, dtype=torch.long, device="meta")).shape == (1, VOCAB)
        assert dec.capacity > ALIGN


def test_graphs_are_for_cuda_only_and_a_step_needs_a_prefill(phi):
    dec = phi_decoder(phi, budget=4)
    assert dec.use_graph is False
    with pytest.raises(RuntimeError, match="before prefill"):
        dec.step(torch.tensor([1]))


@torch.inference_mode()
def test_a_step_that_cannot_be_captured_decodes_eagerly_and_says_why(phi, monkeypatch):
    seq = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(5))
    dec = phi_decoder(phi, budget=4, use_graph=True)
    dec.prefill(seq, torch.arange(6)[None])

    def broken_capture():
        raise RuntimeError("operation not permitted when stream is capturing\nmore")

    monkeypatch.setattr(dec, "_capture", broken_capture)
    token = torch.tensor([9])
    with pytest.warns(UserWarning, match="decoding eagerly"):
        got = dec.step(token)
    assert dec.use_graph is False
    assert dec.graph_error == "RuntimeError: operation not permitted when stream is capturing"
    torch.testing.assert_close(got, phi_reference(phi, torch.cat([seq, token[:, None]], 1)), rtol=1e-5, atol=1e-5)


def test_speed_context_is_plain_text_whatever_the_tokenizer_puts_in_its_range():
    tok = add_task_tokens(tiny_base_tokenizer())
    special = set(tok.all_special_ids) | set(tok.added_tokens_decoder)
    assert special & set(range(100, 1000))  # the byte-level tokenizer's pad/task tokens sit in the range
    ids = speed_context_ids(5000, tok)
    assert ids.shape == (1, 5000) and ids.dtype == torch.long
    assert not set(ids.unique().tolist()) & special and ids.min() >= 100 and ids.max() < 1000
    assert torch.equal(ids, speed_context_ids(5000, tok))


# -- CUDA only (skipped on CPU): the captured graph replays exactly what the eager step computes --
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", BACKBONES)
@torch.inference_mode()
def test_cuda_graph_replay_equals_the_eager_step_across_a_growth(name, dtype, request):
    model = request.getfixturevalue(name).to("cuda", dtype)
    make, reference = BACKBONES[name]
    gen = torch.Generator().manual_seed(4)
    n = ALIGN - 3
    seq = torch.randint(0, VOCAB, (2, n), generator=gen).cuda()
    graphed, eager = make(model, budget=1), make(model, budget=1, use_graph=False)
    assert graphed.use_graph
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    positions = torch.arange(n, device="cuda").expand(2, n)
    torch.testing.assert_close(graphed.prefill(seq, positions), eager.prefill(seq, positions), **tol)
    for _ in range(6):  # the 4th step grows the buffers: a second capture
        token = torch.randint(0, VOCAB, (2,), generator=gen).cuda()
        seq = torch.cat([seq, token[:, None]], 1)
        got, want = graphed.step(token), eager.step(token)
        assert graphed.graph is not None and graphed.graph_error is None and torch.isfinite(got).all()
        torch.testing.assert_close(got, want, **tol)
        if dtype == torch.float32:
            torch.testing.assert_close(got, reference(model, seq), rtol=1e-4, atol=1e-4)
    model.to("cpu", torch.float32)
