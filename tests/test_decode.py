"""One decode toolkit: the greedy loop every family's understanding path runs (stops, per-row limits,
finished rows), mode=best answers made by the timed path (the sweep's prefill/decode_step), mode=best and
as_published agreeing, and one dtype policy with each family's own `auto`."""
from __future__ import annotations

import sys

import pytest
import torch

from omnibench.models.common.decode import decode_answers, greedy, token_limits
from omnibench.models.common.dtypes import DTYPES, bfloat16_on_cuda, resolve_dtype
from omnibench.models.common.static_decode import StaticDecoder
from omnibench.models.janusflow import JanusFlowAdapter
from omnibench.models.omnimamba import OmniMambaAdapter
from omnibench.models.omnimamba.modeling_omnimamba import DecodeState
from omnibench.models.omnimamba.reference import MambaSsmReference
from omnibench.models.showo import ShowoAdapter
from omnibench.data import drawn_image
from omnibench.protocol import OmnibenchError, Request

ADAPTERS = {"omnimamba": OmniMambaAdapter, "showo": ShowoAdapter, "janusflow": JanusFlowAdapter}
IMAGE_SIZE = {"omnimamba": 56, "showo": 32, "janusflow": 40}
LIMITS = [6, 3, 5]


# -- the loop, on scripted logits ------------------------------------------------------------------------
EOS, EOT, V = 2, 3, 16


def one_hot(tokens: list[int]) -> torch.Tensor:
    logits = torch.zeros(len(tokens), V)
    logits[torch.arange(len(tokens)), torch.tensor(tokens)] = 1.0
    return logits


class Script:
    """Stands in for a model: row r's argmax at step i is rows[r][i]; records what each step was fed."""

    def __init__(self, rows: list[list[int]]):
        self.rows, self.fed = rows, []

    def first(self) -> torch.Tensor:
        return one_hot([r[0] for r in self.rows])

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self.fed.append(token.tolist())
        i = len(self.fed)
        return one_hot([r[min(i, len(r) - 1)] for r in self.rows])


def test_greedy_stops_each_row_at_its_first_stop_id_and_finished_rows_repeat_it():
    s = Script([[5, EOS, 7, 7, 7, 7, 7],  # stops at step 1, then would go on with 7s
                [5, 6, 7, EOT, 9, EOS, 9],  # stops with [EOT]; the EOS after it is never produced
                [8, 8, 8, 8, 8, 8, 8]])  # never stops: the budget ends it
    out = greedy(s.first(), s.step, {EOS, EOT}, max_new_tokens=6)
    assert out.tolist() == [[5, EOS, EOS, EOS, EOS, EOS],
                            [5, 6, 7, EOT, EOT, EOT],
                            [8, 8, 8, 8, 8, 8]]
    # what each step read: every token but the last (no step after the budget's last token)
    assert s.fed == out[:, :-1].T.tolist()


def test_greedy_ends_the_batch_once_every_row_has_stopped():
    s = Script([[5, EOS, 7, 7, 7], [EOT, 9, 9, 9, 9]])
    out = greedy(s.first(), s.step, {EOS, EOT}, max_new_tokens=20)
    assert out.tolist() == [[5, EOS], [EOT, EOT]]
    assert s.fed == [[5, EOT]]


def test_greedy_budgets_of_one_and_none_take_no_step():
    s = Script([[5, 6], [7, 8]])
    assert greedy(s.first(), s.step, {EOS}, max_new_tokens=1).tolist() == [[5], [7]]
    none = greedy(s.first(), s.step, {EOS}, max_new_tokens=0)
    assert none.shape == (2, 0) and s.fed == []


class Words:
    """A tokenizer that spells ids as words; ids >= 10 are special (dropped with skip_special_tokens)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = True) -> str:
        assert skip_special_tokens and not clean_up_tokenization_spaces  # the clean-up is done explicitly
        return "  " + " ".join(f"w{i}" for i in ids if i < 10) + " "


def test_answers_are_cut_at_each_rows_limit_and_before_its_first_stop_id():
    tokens = torch.tensor([[5, EOS, EOS, EOS, EOS, EOS],
                           [5, 6, 7, EOT, EOT, EOT],
                           [8, 11, 8, 8, 8, 8],
                           [4, EOT, EOS, 4, 4, 4]])
    texts = decode_answers(Words(), tokens, [6, 2, 4, 6], {EOS, EOT})
    assert texts == ["w5",  # cut before EOS
                     "w5 w6",  # its limit (2) comes before its stop
                     "w8 w8 w8",  # limit 4, special id 11 skipped, stripped
                     "w4"]  # the first of two stop ids


def test_token_limits_read_each_request_with_the_familys_default():
    reqs = [Request("a", "q", [], {"max_new_tokens": 7}), Request("b", "q"), Request("c", "q", [], {"max_new_tokens": "3"})]
    assert token_limits(reqs, 100) == [7, 100, 3]


# -- the tiny presets: mode=best decodes through the timed path ----------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    built = {}

    def get(family: str, mode: str):
        if (family, mode) not in built:
            built[family, mode] = ADAPTERS[family](preset="tiny", dtype="float32", mode=mode)
        return built[family, mode]

    return get


def three_requests(family: str) -> list[Request]:
    """Three images, three prompt lengths (so that rows are left-padded), three budgets."""
    s = IMAGE_SIZE[family]
    prompts = ["what is in the picture?", "how many?", "describe the colours of every shape in this picture please"]
    images = [drawn_image(1, size=s), drawn_image(2, size=s, shape="circle"), drawn_image(3, size=s)]
    return [Request(str(i), p, [im], {"max_new_tokens": n}) for i, (p, im, n) in enumerate(zip(prompts, images, LIMITS))]


class Recorder:
    """Spies on an adapter's generate_text: the tokens the common loop produced, the logits it read, the
    adapter's prefill budget and state, its decode_step calls, and StaticDecoder steps."""

    def __init__(self, adapter, monkeypatch):
        self.tokens, self.logits, self.prefills, self.static_steps = None, [], [], 0
        module = sys.modules[type(adapter).__module__]
        real_greedy, real_prefill, real_decode = module.greedy, adapter.prefill, adapter.decode_step
        real_static_step = StaticDecoder.step

        def spy_greedy(logits, step, stop_ids, max_new_tokens):
            self.logits.append(logits.clone())
            self.tokens = real_greedy(logits, step, stop_ids, max_new_tokens)
            return self.tokens

        def spy_prefill(*args, **kwargs):
            state = real_prefill(*args, **kwargs)
            self.prefills.append((kwargs.get("max_new_tokens"), state))
            return state

        def spy_decode(state, token):
            out = real_decode(state, token)
            self.logits.append(out.clone())
            return out

        def spy_static_step(decoder, token):
            self.static_steps += 1
            return real_static_step(decoder, token)

        monkeypatch.setattr(module, "greedy", spy_greedy)
        monkeypatch.setattr(adapter, "prefill", spy_prefill)
        monkeypatch.setattr(adapter, "decode_step", spy_decode)
        monkeypatch.setattr(StaticDecoder, "step", spy_static_step)


def hand_run(adapter, requests: list[Request], n: int) -> torch.Tensor:
    """The speed sweep's path run by hand: the adapter's prefill with a budget of n tokens, then plain
    argmax through its decode_step, n tokens in all, no stopping."""
    if isinstance(adapter, OmniMambaAdapter):  # each prompt read alone (with its image), states stacked
        m, states, first = adapter.model, [], []
        for r in requests:
            feats = m.image_features(m.vision_backbone.preprocess([r.images[0]]))
            state, logits = m.prefill(adapter.mmu_embeddings(r.prompt, feats), "mmu")
            states.append(state)
            first.append(logits)
        state = DecodeState([torch.cat(t) for t in zip(*(s.conv for s in states))],
                            [torch.cat(t) for t in zip(*(s.ssm for s in states))],
                            torch.cat([s.position for s in states]), states[0].route)
        logits = torch.cat(first)
    else:
        inputs = (adapter.mmu_inputs(adapter.prepare_text(requests)) if isinstance(adapter, JanusFlowAdapter)
                  else (adapter.mmu_ids(adapter.prepare_text(requests)),))
        state = adapter.prefill(*inputs, max_new_tokens=n)
        logits = state.logits
    out = []
    for i in range(n):
        out.append(logits.argmax(-1))
        if i < n - 1:
            logits = adapter.decode_step(state, out[-1])
    return torch.stack(out, 1)


def stop_ids(adapter) -> set[int]:
    return adapter.stop_ids if isinstance(adapter, OmniMambaAdapter) else {adapter.eos_id}


@pytest.mark.parametrize("family", list(ADAPTERS))
def test_best_mode_answers_are_the_timed_paths_tokens(family, tiny, monkeypatch):
    adapter, reqs, n = tiny(family, "best"), three_requests(family), max(LIMITS)
    want = hand_run(adapter, reqs, n)
    assert not any(t in stop_ids(adapter) for t in want.flatten().tolist())  # every row runs the whole budget
    rec = Recorder(adapter, monkeypatch)
    texts = adapter.generate_text(reqs)
    assert torch.equal(rec.tokens, want)
    assert len(rec.logits) == n  # the first logits, then one decode_step per token but the last
    assert texts == [adapter.tokenizer.decode(row[:limit], skip_special_tokens=True).strip()
                     for row, limit in zip(want.tolist(), LIMITS)]
    if family != "omnimamba":  # the sweep's prefill, sized for the budget, and its static-cache steps
        assert [(budget, type(state)) for budget, state in rec.prefills] == [(n, StaticDecoder)]
        assert rec.static_steps == n - 1


@pytest.mark.parametrize("family", list(ADAPTERS))
def test_best_and_as_published_give_the_same_answers(family, tiny, monkeypatch):
    best, published, reqs = tiny(family, "best"), tiny(family, "as_published"), three_requests(family)
    if family == "showo":
        ids = best.mmu_ids(best.prepare_text(reqs))
        assert (ids[:, 0] == best.pad_id).sum() == 2  # two rows left-padded
    if family == "janusflow":
        assert (best.mmu_inputs(best.prepare_text(reqs))[1][:, 0] == 0).sum() == 2
    recs = {}
    answers = {}
    for name, adapter in (("best", best), ("published", published)):
        with monkeypatch.context() as m:
            recs[name] = Recorder(adapter, m)
            answers[name] = adapter.generate_text(reqs)
    assert answers["best"] == answers["published"] and all(answers["best"])
    assert torch.equal(recs["best"].tokens, recs["published"].tokens)
    assert len(recs["best"].logits) == len(recs["published"].logits) == max(LIMITS)
    for got, want in zip(recs["best"].logits, recs["published"].logits):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    if family != "omnimamba":  # as published: upstream's loop, not the static cache
        assert recs["published"].static_steps == 0 and recs["best"].static_steps == max(LIMITS) - 1
        assert not isinstance(recs["published"].prefills[0][1], StaticDecoder)


# -- one dtype policy ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,dtype", [("float32", torch.float32), ("fp32", torch.float32),
                                        ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16),
                                        ("float16", torch.float16), ("fp16", torch.float16)])
def test_every_name_and_alias_maps_to_its_dtype(name, dtype):
    assert resolve_dtype(name, "cpu", "m", auto=torch.float16) is dtype
    assert resolve_dtype(name, "cuda", "m", auto=bfloat16_on_cuda) is dtype  # auto plays no part


def test_auto_is_the_familys_own_choice():
    assert resolve_dtype("auto", "cpu", "m", auto=torch.float16) is torch.float16
    assert resolve_dtype("auto", "cpu", "m", auto=bfloat16_on_cuda) is torch.float32
    assert resolve_dtype("auto", "cuda:1", "m", auto=bfloat16_on_cuda) is torch.bfloat16


class _Stop(Exception):
    pass


# family -> its auto on cpu and on cuda (mamba2_ref runs on CUDA only)
STATED_AUTO = {OmniMambaAdapter: (torch.float32, torch.float32), ShowoAdapter: (torch.float32, torch.float32),
               JanusFlowAdapter: (torch.float32, torch.bfloat16), MambaSsmReference: (None, torch.bfloat16)}


@pytest.mark.parametrize("cls", list(STATED_AUTO), ids=lambda c: c.name)
def test_each_family_states_its_auto_through_the_policy(cls, monkeypatch):
    """The adapter hands the policy its `auto` (stopped there: nothing is loaded), read on cpu and cuda."""
    seen = []

    def spy(dtype, device, model, auto=torch.float32):
        seen.append((dtype, model, auto(device) if callable(auto) else auto))
        raise _Stop

    monkeypatch.setattr(sys.modules[cls.__module__], "resolve_dtype", spy)
    for device, want in zip(("cpu", "cuda"), STATED_AUTO[cls]):
        if want is None:
            continue
        with pytest.raises(_Stop):
            cls(device=device, dtype="auto")
        assert seen.pop() == ("auto", cls.name, want)


@pytest.mark.parametrize("family", list(ADAPTERS))
def test_auto_on_cpu_builds_the_tiny_preset_in_float32(family):
    adapter = ADAPTERS[family](preset="tiny")
    assert {p.dtype for p in adapter.model.parameters()} == {torch.float32}


def test_an_alias_reaches_the_weights():
    adapter = ShowoAdapter(preset="tiny", dtype="bf16")
    assert {p.dtype for p in adapter.model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("cls,device", [(OmniMambaAdapter, "cpu"), (ShowoAdapter, "cpu"), (JanusFlowAdapter, "cpu"),
                                        (MambaSsmReference, "cuda")], ids=lambda c: getattr(c, "name", c))
def test_an_unknown_dtype_is_one_line_naming_the_model_and_the_known_names(cls, device):
    with pytest.raises(OmnibenchError) as err:
        cls(device=device, dtype="int8")
    assert str(err.value) == (f"unknown dtype 'int8' for model {cls.name} "
                              "(known: auto, float32, fp32, bfloat16, bf16, float16, fp16)")
    assert list(DTYPES) == ["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"]


def test_clean_up_tokenization_is_transformers_4s():
    from omnibench.models.common.decode import clean_up_tokenization

    assert clean_up_tokenization("Yes , it is . Is it ? No ! I do n't know , it 's there") == \
        "Yes, it is. Is it? No! I don't know, it's there"
    assert clean_up_tokenization("I 'm sure we 've seen they 're ' here ' .") == "I'm sure we've seen they're'here '."  # replacements in v4's order
    assert clean_up_tokenization("3 . 5") == "3. 5"  # only the space before the mark goes


def test_answers_are_cleaned_up_as_upstream_decoded_them_whatever_transformers_default():
    from omnibench.models.common.decode import decode_answers
    from omnibench.models.common.presets import byte_bpe_tokenizer

    tok = byte_bpe_tokenizer([], bos="<s>", eos="</s>")
    ids = tok("Yes , there is a cat .", add_special_tokens=False).input_ids
    eos = tok.convert_tokens_to_ids("</s>")
    tokens = torch.tensor([ids + [eos]])
    assert decode_answers(tok, tokens, [64], {eos}) == ["Yes, there is a cat."]
    tok.init_kwargs["clean_up_tokenization_spaces"] = False  # a checkpoint whose config says no clean-up
    assert decode_answers(tok, tokens, [64], {eos}) == ["Yes , there is a cat ."]
