"""Show-o adapter on its tiny preset: omni-attention masks, KV-cache decoding, the masked-diffusion
sampler's schedule, the MAGVIT-v2 lookup-free codes, checkpoint round trip, and both entry points."""
import json

import pytest
import torch

from omnibench.data import drawn_image
from omnibench.protocol import OmnibenchError, Request
from omnibench.models.showo import ShowoAdapter
from omnibench.models.common.checkpoint_io import read_state_dict
from omnibench.models.common.presets import random_init_
from omnibench.models.showo.checkpoint import from_pretrained, save_weights, tiny_checkpoint, tiny_configs
from omnibench.models.showo.magvit import LFQuantizer, MagvitConfig, image_transform
from omnibench.models.common.static_decode import StaticDecoder
from omnibench.models.showo.modeling_showo import Showo, mmu_attention_mask, t2i_attention_mask, t2i_sample

PAD, SOI, EOI, T2I, MMU, BOS, EOS, M = 0, 1, 2, 3, 4, 5, 6, 9


@pytest.fixture(scope="module")
def best():
    return ShowoAdapter(preset="tiny", generation_timesteps="4")


@pytest.fixture(scope="module")
def published():
    return ShowoAdapter(preset="tiny", generation_timesteps="4", mode="as_published")


def test_t2i_mask_is_causal_over_text_and_full_over_the_image_without_pads():
    ids = torch.tensor([[PAD, PAD, T2I, BOS, 7, EOS, SOI, M, M, EOI]])
    got = t2i_attention_mask(ids, PAD, SOI, EOI)
    assert got.shape == (1, 1, 10, 10) and got.dtype == torch.bool
    expected = torch.tensor([
        # cols: P  P  t2i bos 7 eos soi M  M  eoi
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # pad row: causal among the pads
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 0, 0, 0, 0],  # text after the pads does not see them
        [0, 0, 1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 1, 1, 1, 1],  # <|soi|> .. <|eoi|>: every non-pad position
        [0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(got[0, 0], expected)


def test_t2i_mask_without_padding_rows_are_per_sample():
    ids = torch.tensor([[T2I, BOS, EOS, SOI, M, EOI], [PAD, T2I, BOS, SOI, M, EOI]])
    got = t2i_attention_mask(ids, PAD, SOI, EOI)[:, 0]
    assert torch.equal(got[0, :3, :3], torch.ones(3, 3, dtype=torch.bool).tril())
    assert got[0, 3:].all()
    assert not got[1, 3:, 0].any() and got[1, 3:, 1:].all()


def test_mmu_mask_sees_the_whole_image_prefix_and_is_causal_after_it():
    ids = torch.tensor([[PAD, MMU, SOI, 20, 21, EOI, BOS, 7, 8]])
    got = mmu_attention_mask(ids, PAD, EOI)[0, 0]
    expected = torch.zeros(9, 9, dtype=torch.bool)
    expected[0, 0] = True  # a pad row only sees itself
    for row in range(1, 9):
        expected[row, 1:max(row, 5) + 1] = True  # up to <|eoi|> (index 5), then causal
    assert torch.equal(got, expected)


def test_lookup_free_codes_take_the_first_channel_as_most_significant_bit():
    q = LFQuantizer(4)
    z = torch.tensor([1.0, -2.0, 0.5, -0.1]).view(1, 4, 1, 1)  # signs 1 0 1 0
    assert q.codes(z).tolist() == [[0b1010]]
    codes = torch.tensor([[0b1010, 0b0001, 0b1111, 0]])
    lat = q.latents(codes)
    assert lat.shape == (1, 4, 2, 2)
    assert lat[0, :, 0, 0].tolist() == [1, -1, 1, -1]
    assert torch.equal(q.codes(lat), codes)
    # 13 bits (Show-o's 8192 codes) stay exact when the tokenizer runs in bfloat16.
    q13 = LFQuantizer(13).to(torch.bfloat16)
    assert q13.codes(q13.latents(torch.tensor([[8191, 4097, 0, 1]]))).tolist() == [[8191, 4097, 0, 1]]


def test_image_transform_resizes_the_short_side_and_center_crops():
    img = drawn_image(0, size=64).resize((60, 30))
    x = image_transform(img, 16)
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1


def test_sampler_reveals_tokens_on_the_cosine_schedule():
    # 16 tokens, 4 steps: masked after each step floor(16 cos(pi/2 r)) = 14, 11, 6, then max(1, ...) = 1.
    seen = []

    def logits_fn(ids):
        seen.append(int((ids == 99).sum()))
        logits = torch.full((1, 16, 8), -30.0)
        logits[..., 3] = 30.0  # code 3 is (almost) certain everywhere
        return logits

    gens = [torch.Generator().manual_seed(0)]
    out = t2i_sample(logits_fn, torch.full((1, 16), 99), 4, 99, gens)
    assert seen == [16, 14, 11, 6]
    assert out.tolist() == [[3] * 16]


def test_sampler_keeps_given_tokens():
    start = torch.tensor([[5, 99, 99, 6]])
    out = t2i_sample(lambda ids: torch.zeros(1, 4, 8), start, 3, 99, [torch.Generator().manual_seed(1)])
    assert out[0, 0] == 5 and out[0, 3] == 6


def test_kv_cache_decoding_equals_full_recomputation(best, published):
    ids = best.mmu_ids(best.prepare_text([Request("a", "what is it?", [drawn_image(1, size=32)]),
                                          Request("b", "and the color of that one?", [drawn_image(2, size=32)])]))
    assert (ids[0, 0] == best.pad_id) and (ids[1, 0] != best.pad_id)  # left padding in play
    # mode=best prefill/decode_step (static KV cache: what generate_text and the sweep decode with)
    s2, s4 = published.prefill(ids), best.prefill(ids, 2)
    torch.testing.assert_close(s4.logits, s2.logits, rtol=1e-4, atol=1e-4)
    for tok in ([7, 8], [100, 3], [best.eos_id, 40]):
        token = torch.tensor(tok)
        want = published.decode_step(s2, token)
        torch.testing.assert_close(best.decode_step(s4, token), want, rtol=1e-4, atol=1e-4)
    assert s2.ids.shape[1] == ids.shape[1] + 3 and s4.length == ids.shape[1] + 3


def test_text_only_context_takes_the_maskless_causal_path_with_the_same_logits(best, published):
    ids = torch.randint(10, 200, (2, 12), generator=torch.Generator().manual_seed(0))  # the speed sweep's kind
    s1, s2 = best.prefill(ids), published.prefill(ids)
    assert best._mask(ids) is None
    assert isinstance(s1, StaticDecoder) and not isinstance(s2, StaticDecoder)  # best: static cache; as published: recompute
    torch.testing.assert_close(s1.logits, s2.logits, rtol=1e-4, atol=1e-4)
    for _ in range(3):
        token = s1.logits.argmax(-1)
        torch.testing.assert_close(best.decode_step(s1, token), published.decode_step(s2, token), rtol=1e-4, atol=1e-4)


def test_batched_answers_equal_single_answers(best):
    reqs = [Request("a", "what?", [drawn_image(3, size=32)], {"max_new_tokens": 6}),
            Request("b", "a longer question here?", [drawn_image(4, size=32)], {"max_new_tokens": 3})]
    together = best.generate_text(reqs)
    assert together == [best.generate_text([r])[0] for r in reqs]
    assert all(isinstance(t, str) for t in together)


def test_text_to_image_is_the_same_in_both_modes_and_batches(best, published):
    reqs = [Request("x", "a red cat", seed=1), Request("y", "two dogs on a bus", seed=2)]
    a = best.generate_image_tokens(reqs)
    assert torch.equal(a, published.generate_image_tokens(reqs))
    assert torch.equal(a[1:], best.generate_image_tokens(reqs[1:]))
    assert a.min() >= 0 and a.max() < best.cfg.codebook_size
    images = best.generate_images(reqs)
    assert [im.size for im in images] == [(16, 16)] * 2 and images[0].mode == "RGB"


def test_t2i_prompt_is_left_padded_to_max_text_len_plus_one(best):
    row = best.t2i_prefix(["hi"])[0]
    assert len(row) == best.cfg.max_text_len + 1
    hi = best.tokenizer("hi")["input_ids"]
    assert len(hi) == 2 and best.bos_id not in hi  # Phi's tokenizer adds no bos: the prompt does
    assert row[-5:] == [best.sp["<|t2i|>"], best.bos_id, *hi, best.eos_id]
    assert set(row[:-5]) == {best.pad_id}
    long = best.t2i_prefix(["x" * 300])[0]
    assert len(long) == best.cfg.max_text_len + 1 and long[-1] == best.eos_id


def test_checkpoint_keys_round_trip_and_mismatches_are_named(tmp_path):
    root = tiny_checkpoint()
    model, vq, tok = from_pretrained(str(root / "show-o"), str(root / "magvitv2"))
    sd = read_state_dict(root / "show-o")
    assert set(sd) == set(model.state_dict())
    assert "showo.model.layers.0.self_attn.q_layernorm.weight" in sd and "showo.lm_head.bias" in sd
    assert {"quantize.embedding", "quantize.power_vals", "encoder.quant_conv.weight",
            "decoder.post_quant_conv.weight"} <= set(read_state_dict(root / "magvitv2"))
    for key, val in model.state_dict().items():
        assert torch.equal(val, sd[key])
    # Drop one key and add a stray one: the error names both.
    broken = tmp_path / "show-o"
    broken.mkdir()
    (broken / "config.json").write_text((root / "show-o" / "config.json").read_text())
    save_weights(model, broken)
    from safetensors.torch import load_file, save_file
    bad = load_file(str(broken / "model.safetensors"))
    del bad["showo.model.final_layernorm.bias"]
    bad["showo.extra.weight"] = torch.zeros(1)
    save_file(bad, str(broken / "model.safetensors"))
    with pytest.raises(OmnibenchError, match=r"missing key\(s\) showo.model.final_layernorm.bias.*"
                                             r"unexpected key\(s\) showo.extra.weight"):
        from_pretrained(str(broken), str(root / "magvitv2"))
    assert json.loads((root / "show-o" / "config.json").read_text())["vocab_size"] == len(tok) + 16 + 1


def test_unknown_mode_is_refused():
    with pytest.raises(OmnibenchError, match="unknown mode"):
        ShowoAdapter(preset="tiny", mode="fast")


def test_full_preset_is_the_published_architecture_built_on_the_device():
    a = ShowoAdapter(device="meta", dtype="bfloat16", preset="full")  # meta: sizes without 6 GB of weights
    c = a.cfg
    assert (c.vocab_size, c.llm_vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
            c.intermediate_size, c.partial_rotary_factor, c.codebook_size, c.num_vq_tokens) == \
        (58498, 50295, 2048, 24, 32, 8192, 0.5, 8192, 256)
    assert 1.3e9 < sum(p.numel() for p in a.model.parameters()) < 1.5e9  # Phi-1.5 + Show-o's vocabulary
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in a.model.parameters())
    assert a.vq.config == MagvitConfig() and a.resolution == 256
    assert len(a.tokenizer) <= c.image_offset  # text ids never collide with image codes
    ids = a.speed_context(4096)
    assert ids.shape == (1, 4096) and a._mask(ids) is None  # plain text: the flash/causal path


def test_random_init_draws_every_matrix_small_and_keeps_norms():
    cfg = tiny_configs()[0]
    model = random_init_(Showo(cfg))
    w = model.showo.model.layers[0].self_attn.q_proj.weight
    assert abs(w.std().item() - 0.02) < 0.002 and abs(model.showo.model.embed_tokens.weight.std().item() - 0.02) < 0.002
    assert torch.equal(model.showo.model.final_layernorm.weight, torch.ones(cfg.hidden_size))


def test_text_to_image_defaults_are_each_checkpoints_published_settings():
    from omnibench.models.showo.adapter import ShowoAdapter, t2i_settings
    from omnibench.models.showo.checkpoint import DEFAULT_SHOWO

    assert DEFAULT_SHOWO == "showlab/show-o-512x512"  # the paper's Table 1 Show-o row is the 512 px model
    assert t2i_settings(1024, None, None) == (5.0, 50)  # 512 px README: guidance_scale=5 generation_timesteps=50
    assert t2i_settings(256, None, None) == (1.75, 16)  # 256 px README demos: 1.75, 16
    assert t2i_settings(256, 3.0, None) == (3.0, 16) and t2i_settings(1024, None, 7) == (5.0, 7)
    adapter = ShowoAdapter(preset="tiny", guidance_scale="2")
    assert (adapter.guidance_scale, adapter.timesteps) == (2.0, 50)
