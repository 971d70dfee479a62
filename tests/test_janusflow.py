"""JanusFlow adapter on its tiny preset: the rectified-flow sampler on known velocity fields, KV-cache
decoding, prompt format and image-token expansion, preprocessing, checkpoint round trip, both entry points."""
import builtins

import pytest
import torch
from PIL import Image

from omnibench.data import drawn_image
from omnibench.protocol import OmnibenchError, Request
from omnibench.models.janusflow import JanusFlowAdapter
from omnibench.models.janusflow.checkpoint import (ImageProcessing, from_pretrained, full_config, load_vae, random_sdxl_vae,
                                        tiny_checkpoint)
from omnibench.models.janusflow.modeling_janusflow import attn_implementation, official_state_dict, rectified_flow_sample
from omnibench.models.janusflow.uvit import timestep_embedding
from omnibench.models.janusflow.adapter import preprocess, sft_prompt
from omnibench.models.common.checkpoint_io import read_state_dict


@pytest.fixture(scope="module")
def best():
    return JanusFlowAdapter(preset="tiny", num_inference_steps="3")


@pytest.fixture(scope="module")
def published():
    return JanusFlowAdapter(preset="tiny", num_inference_steps="3", mode="as_published")


# -- the sampler --
def test_zero_velocity_returns_the_input():
    z = torch.randn(2, 4, 3, 3)
    out = rectified_flow_sample(lambda zz, t: torch.zeros_like(zz), z, 7, cfg_weight=5.0)
    assert torch.equal(out, z)


def test_constant_velocity_integrates_exactly():
    z = torch.tensor([0.25, -1.5, 3.0]).view(3, 1, 1, 1)
    out = rectified_flow_sample(lambda zz, t: torch.full_like(zz, 0.5), z, 4, cfg_weight=2.0)
    assert torch.equal(out, z + 0.5)


def test_guidance_combines_conditional_and_unconditional_velocities():
    # v_cond = 1, v_uncond = 0.5 -> v = w * 1 - (w - 1) * 0.5 = 1.5 for w = 2, over one unit of time.
    def field(zz, t):
        b = zz.shape[0] // 2
        return torch.cat([torch.ones_like(zz[:b]), torch.full_like(zz[b:], 0.5)])

    out = rectified_flow_sample(field, torch.zeros(1, 1, 1, 1), 8, cfg_weight=2.0)
    assert out.item() == 1.5


def test_euler_steps_read_the_time_at_the_start_of_each_step():
    # v = t / 1000 with t = k / N * 1000: Euler gives sum_k k / N^2 = (N - 1) / (2N) = 0.375 for N = 4.
    seen = []

    def field(zz, t):
        seen.append(t[0].item())
        assert t.shape == (zz.shape[0],)
        return (t / 1000.0).view(-1, 1, 1, 1).expand_as(zz)

    out = rectified_flow_sample(field, torch.zeros(2, 1, 1, 1), 4, cfg_weight=3.0)
    assert seen == [0.0, 250.0, 500.0, 750.0]
    assert torch.equal(out, torch.full((2, 1, 1, 1), 0.375))


def test_timestep_embedding_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    from diffusers.models.embeddings import Timesteps

    t = torch.tensor([0.0, 33.3, 500.0, 966.7])
    ref = Timesteps(32, flip_sin_to_cos=True, downscale_freq_shift=0)(t)
    torch.testing.assert_close(timestep_embedding(t, 32), ref)
    assert diffusers  # used


# -- prompts and preprocessing --
def test_chat_template_matches_the_deepseek_format():
    assert (sft_prompt("<image_placeholder>\nWhat is it?", "SYS")
            == "SYS\n\nUser: <image_placeholder>\nWhat is it?\n\nAssistant:")
    assert sft_prompt("a cat", "") == "User: a cat\n\nAssistant:"


def test_preprocess_resizes_the_long_side_and_pads_with_the_mean_colour():
    img = Image.new("RGB", (64, 32), (255, 0, 0))
    p = ImageProcessing(image_size=32, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    x = preprocess(img, p)
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x[:, 8:24, :], torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1))  # the image, 32 x 16
    assert torch.allclose(x[:, :8], torch.full((3, 8, 32), 127 / 255 * 2 - 1), atol=1e-6)  # int(0.5 * 255) pad


def test_tokenizer_keeps_spaces_and_adds_one_bos(best):
    ids = best.encode("User: hello world\n\nAssistant:")
    assert ids[0] == best.bos_id and best.bos_id not in ids[1:]
    assert best.tokenizer.decode(ids[1:]) == "User: hello world\n\nAssistant:"
    assert best.encode("<image_placeholder>")[1:] == [best.ids["<image_placeholder>"]]


def test_image_placeholder_expands_to_begin_tokens_end_and_gets_the_image_embeddings(best):
    req = Request("a", "what?", [drawn_image(5, size=40)])
    ids, mask, embeds = best.mmu_inputs(best.prepare_text([req]))
    prompt = best.encode(sft_prompt("<image_placeholder>\nwhat?", best.system_prompt))
    n = best.num_image_tokens
    assert embeds.shape[1] == ids.shape[1] == len(prompt) + n + 1 and mask.all()
    at = prompt.index(best.ids["<image_placeholder>"])
    feats = best.model.image_embeddings(preprocess(req.images[0], best.processing)[None])
    torch.testing.assert_close(embeds[0, at:at + n + 1], feats[0])
    eoi = best.model.language_model.get_input_embeddings().weight[best.ids["<end_of_image>"]]
    torch.testing.assert_close(embeds[0, at + n + 1], eoi)
    torch.testing.assert_close(feats[0, 0], best.model.beg_of_und_embed[0])


# -- decoding --
def test_kv_cache_decoding_equals_full_recomputation(best):
    ids = torch.tensor([[best.pad_id, best.pad_id, best.bos_id, 10, 11], [best.bos_id, 20, 21, 22, 23]])
    state = best.prefill(ids)
    seq, logits = ids, [state.logits]
    for tok in ([5, 6], [7, best.eos_id], [9, 9]):
        logits.append(best.decode_step(state, torch.tensor(tok)))
        seq = torch.cat([seq, torch.tensor(tok)[:, None]], 1)
    mask = (seq != best.pad_id).long()
    with torch.no_grad():
        full = best.model.language_model(input_ids=seq, attention_mask=mask,
                                         position_ids=best._positions(mask)).logits.float()
    for k, got in enumerate(logits):
        torch.testing.assert_close(got, full[:, ids.shape[1] - 1 + k], rtol=1e-4, atol=1e-4)


def test_batched_answers_equal_single_answers(best):
    reqs = [Request("a", "what?", [drawn_image(3, size=40)], {"max_new_tokens": 6}),
            Request("b", "a much longer question about it?", [drawn_image(4, size=40)], {"max_new_tokens": 3})]
    together = best.generate_text(reqs)
    assert together == [best.generate_text([r])[0] for r in reqs]
    assert len(best.tokenizer.encode(together[1], add_special_tokens=False)) <= 3


def test_prompt_cache_gives_the_published_latents_and_rows_are_independent(best, published):
    reqs = [Request("x", "a red cat", seed=1), Request("y", "a dog on a long bus", seed=2)]
    z = best.generate_latents(reqs)
    assert z.shape == (2, 4, 8, 8) and not z.isnan().any()
    torch.testing.assert_close(z, published.generate_latents(reqs), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(z[1:], best.generate_latents(reqs[1:]), rtol=1e-4, atol=1e-4)


def test_generate_images_end_to_end(best):
    pytest.importorskip("diffusers")
    images = best.generate_images([Request("x", "a red cat", seed=1)])
    assert len(images) == 1 and images[0].size == (16, 16) and images[0].mode == "RGB"


def test_missing_diffusers_is_named(monkeypatch):
    real_import = builtins.__import__

    def no_diffusers(name, *args, **kwargs):
        if name.startswith("diffusers"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_diffusers)
    with pytest.raises(OmnibenchError, match="'diffusers' package"):
        load_vae("stabilityai/sdxl-vae", "cpu", torch.float32)


# -- checkpoint --
def test_checkpoint_keys_round_trip_with_upstream_names(tmp_path):
    root = tiny_checkpoint()
    model, tok, processing, _ = from_pretrained(str(root))
    sd = read_state_dict(root)
    assert set(sd) == set(official_state_dict(model))
    for key in ("vision_und_enc_model.vision_tower.blocks.0.attn.qkv.weight",
                "vision_und_enc_model.vision_tower.pos_embed", "vision_und_enc_model.vision_tower.attn_pool.latent",
                "language_model.model.layers.0.self_attn.q_proj.weight", "language_model.lm_head.weight",
                "beg_of_und_embed", "vision_gen_enc_model.time_embed.linear_1.weight",
                "vision_gen_enc_model.mid_block.res_blocks.0.channelwise_norm.weight",
                "vision_gen_dec_model.out_convs.0.unpatch_conv.weight", "vision_gen_dec_aligner_norm.weight"):
        assert key in sd, key
    for key, val in official_state_dict(model).items():
        assert torch.equal(val, sd[key]), key
    assert processing.image_size == 32
    # A stray key and a missing one are both named.
    import shutil
    from safetensors.torch import save_file
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    bad = dict(sd)
    del bad["vision_gen_dec_aligner.bias"]
    bad["vision_gen_dec_aligner.extra"] = torch.zeros(1)
    save_file(bad, str(broken / "model.safetensors"))
    with pytest.raises(OmnibenchError, match=r"missing key\(s\) vision_gen_dec_aligner.bias.*"
                                             r"unexpected key\(s\) vision_gen_dec_aligner.extra"):
        from_pretrained(str(broken))


def test_sdpa_unless_flash_attention_can_run():
    assert attn_implementation("cpu", torch.bfloat16) == "sdpa"
    assert attn_implementation("cuda", torch.float32) == "sdpa"


# -- preset=full (speed and memory only) --
def test_full_preset_is_the_published_architecture_built_on_the_device():
    a = JanusFlowAdapter(device="meta", dtype="bfloat16", preset="full")  # meta: sizes without 8 GB of weights
    c = a.model.language_model.config
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.intermediate_size, c.rms_norm_eps, c.rope_parameters["rope_theta"]) == \
        (102400, 2048, 24, 16, 16, 5632, 1e-6, 10000.0)
    assert c.max_position_embeddings > 100_000
    tower = a.model.vision_und_enc_model.vision_tower.config
    assert (tower.hidden_size, tower.num_hidden_layers, tower.image_size, tower.patch_size) == (1024, 24, 384, 16)
    assert a.num_image_tokens == 576 and a.model.config.gen.latent_size == 48 and a.model.config.gen.channels == 768
    total = sum(p.numel() for p in a.model.parameters())
    assert 1.3e9 < total < 2.1e9
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in a.model.parameters())
    assert len(a.tokenizer) < c.vocab_size and a.vae_source is None
    ids = a.speed_context(4096)
    assert ids.shape == (1, 4096) and (ids != a.pad_id).all()


def test_full_preset_vae_has_the_sdxl_shape():
    pytest.importorskip("diffusers")
    vae = random_sdxl_vae("meta", torch.bfloat16)
    assert tuple(vae.config.block_out_channels) == (128, 256, 512, 512) and vae.config.latent_channels == 4
    assert vae.config.scaling_factor == 0.13025 and vae.config.layers_per_block == 2
    assert 83e6 < sum(p.numel() for p in vae.parameters()) < 84e6  # stabilityai/sdxl-vae: 83.65M


def test_max_position_embeddings_is_only_a_label_for_the_default_rope():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    pos = torch.tensor([[0, 16383, 16384, 99999, 131071]])
    x = torch.zeros(1, dtype=torch.float32)
    full = LlamaRotaryEmbedding(LlamaConfig(**full_config().llm))(x, pos)
    published = LlamaRotaryEmbedding(LlamaConfig(**dict(full_config().llm, max_position_embeddings=16384)))(x, pos)
    assert all(torch.equal(a, b) for a, b in zip(full, published))
    inv = 1.0 / 10000.0 ** (torch.arange(0, 128, 2, dtype=torch.float32) / 128)
    torch.testing.assert_close(full[0][0, 3, :64], torch.cos(99999.0 * inv))


def test_sweep_decoding_is_static_in_best_mode_and_dynamic_as_published_with_the_same_logits(best, published):
    from omnibench.models.common.static_decode import StaticDecoder

    ids = best.speed_context(40)
    s1, s2 = best.prefill(ids), published.prefill(ids)
    assert isinstance(s1, StaticDecoder) and not isinstance(s2, StaticDecoder)
    torch.testing.assert_close(s1.logits, s2.logits, rtol=1e-4, atol=1e-4)
    for _ in range(3):
        token = s1.logits.argmax(-1).cpu()  # the sweep passes CPU tokens
        torch.testing.assert_close(best.decode_step(s1, token), published.decode_step(s2, token), rtol=1e-4, atol=1e-4)
