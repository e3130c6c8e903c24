"""Decoding: filters on crafted logits, greedy, seeds, beam search against brute force, errors, shapes.

Tests of the raw model distribution pass `rules=None` (the state masks are on by default; their own
tests are in test_performance_state.py and at the end of this file).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from amadeus.errors import UserError
from amadeus.sampling import GenerationMixin, draw, generate, top_k_filter, top_p_filter, warp
from amadeus.vocab import PAD_ID


class TinyGRU(nn.Module):
    """A small model following the amadeus protocol; it reads its own start token before the prompt."""

    family = "tiny_gru"

    def __init__(self, vocab: int = 388, hidden: int = 16, seed: int = 0, pad_logit: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.vocab, self.start = vocab, vocab - 1
        self.emb = nn.Embedding(vocab, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab + int(pad_logit))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 1.5)
            if pad_logit:  # make PAD the most likely id, so masking it is visible
                self.head.bias[-1] = 50.0

    def prefill(self, ids: torch.Tensor, **kw):
        start = torch.full((ids.shape[0], 1), self.start, dtype=torch.long)
        out, h = self.gru(self.emb(torch.cat([start, ids], dim=1)))
        return self.head(out[:, -1]), h

    def step(self, ids: torch.Tensor, state: torch.Tensor):
        out, h = self.gru(self.emb(ids[:, None]), state)
        return self.head(out[:, -1]), h

    def reorder_state(self, state: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return state.index_select(1, index)


@torch.no_grad()
def sequence_logprob(model: TinyGRU, prompt: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Teacher-forced sum of log p(new tokens | prompt) for rows of `new` [N, L]."""
    logits, state = model.prefill(prompt.expand(new.shape[0], -1))
    total = torch.zeros(new.shape[0])
    for t in range(new.shape[1]):
        total += logits.log_softmax(-1).gather(1, new[:, t:t + 1]).squeeze(1)
        logits, state = model.step(new[:, t], state)
    return total


# --- filters -------------------------------------------------------------------------------------

def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [[False, True, False, True, False]]
    assert torch.equal(top_k_filter(logits, 0), logits)
    assert torch.equal(top_k_filter(logits, 10), logits)


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    logits = probs.log()
    # 0.5 < 0.7, 0.5 + 0.3 reaches 0.7: the nucleus is {0, 2}.
    assert torch.isfinite(top_p_filter(logits, 0.7)).tolist() == [[True, False, True, False]]
    # exactly 0.8 is reached by {0, 2}; 0.81 needs the third token too.
    assert torch.isfinite(top_p_filter(logits, 0.81)).tolist() == [[True, False, True, True]]
    # a tiny top_p still keeps the most likely token
    assert torch.isfinite(top_p_filter(logits, 1e-6)).tolist() == [[True, False, False, False]]
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_warp_applies_temperature_then_filters_per_row():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 9.0]])
    out = warp(logits, temperature=2.0, top_k=2)
    assert out[0, 0] == 1.0 and out[0, 1] == 0.5 and out[0, 2] == float("-inf")
    assert torch.isfinite(out[1]).sum() == 3  # ties at the k-th value stay
    with pytest.raises(UserError, match="no token left"):
        warp(torch.full((1, 4), float("-inf")))
    with pytest.raises(UserError, match="no token left"):
        warp(torch.tensor([[float("nan")] * 3]))


def test_draw_samples_the_warped_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    for kw in ({"top_p": 0.8}, {"top_k": 3, "temperature": 0.7}, {"temperature": 1.5}):
        expect = warp(logits, **kw).softmax(-1)[0]
        counts = torch.bincount(draw(logits.expand(20000, -1), **kw), minlength=6) / 20000
        assert (counts[expect == 0] == 0).all()  # nothing outside the filtered set
        assert torch.allclose(counts, expect, atol=0.015)


# --- decoding ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model() -> TinyGRU:
    return TinyGRU().eval()


def test_greedy_follows_the_argmax_path(model):
    prompt = torch.tensor([[60, 300, 188]])
    ids = generate(model, prompt, 12, rules=None)  # raw: the model's own argmax
    assert ids.shape == (1, 15) and torch.equal(ids[:, :3], prompt)
    logits, state = model.prefill(prompt)
    for t in range(12):
        expect = logits.argmax(-1)
        assert ids[0, 3 + t] == expect[0]
        logits, state = model.step(expect, state)


def test_sampling_is_repeatable_with_a_seed_and_leaves_the_global_rng_alone(model):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = generate(model, None, 40, do_sample=True, top_p=0.9, seed=7)
    assert torch.rand(1) == before  # the seed did not reset the caller's RNG
    b = generate(model, None, 40, do_sample=True, top_p=0.9, seed=7)
    c = generate(model, None, 40, do_sample=True, top_p=0.9, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_one_sampling_equals_greedy(model):
    prompt = torch.tensor([5, 6, 7])
    greedy = generate(model, prompt, 20)
    sampled = generate(model, prompt, 20, do_sample=True, top_k=1, temperature=0.3, seed=1)
    assert torch.equal(greedy, sampled)


def test_sampled_tokens_stay_inside_the_nucleus(model):
    prompt = torch.tensor([[60]])
    logits, _ = model.prefill(prompt)
    allowed = torch.isfinite(top_p_filter(logits, 0.5))[0]
    firsts = generate(model, prompt.expand(64, -1), 1, do_sample=True, top_p=0.5, seed=3)[:, 1]
    assert allowed[firsts].all()
    assert len(set(firsts.tolist())) <= int(allowed.sum())


def test_pad_logit_is_never_sampled():
    model = TinyGRU(pad_logit=True).eval()  # 389 logits, PAD hugely favoured
    assert (generate(model, None, 30) < PAD_ID).all()
    assert (generate(model, None, 30, do_sample=True, seed=0) < PAD_ID).all()
    assert (generate(model, None, 5, num_beams=3) < PAD_ID).all()


def test_empty_prompt_uses_bos_id_when_the_model_names_one(model):
    class NeedsPrompt(TinyGRU):
        bos_id = 355

        def prefill(self, ids, **kw):
            assert ids.shape[1] > 0, "this model cannot start from nothing"
            return super().prefill(ids)

    m = NeedsPrompt().eval()
    ids = generate(m, None, 6, batch_size=2)
    assert ids.shape == (2, 6)  # the bos id is fed but not returned
    assert torch.equal(ids[0], generate(m, torch.tensor([[355]]), 6)[0, 1:])


def test_generation_mixin_gives_models_a_generate_method():
    class WithGenerate(GenerationMixin, TinyGRU):
        pass

    m = WithGenerate().eval()
    assert torch.equal(m.generate(torch.tensor([[1, 2]]), 8, do_sample=True, seed=4),
                       generate(m, torch.tensor([[1, 2]]), 8, do_sample=True, seed=4))


def test_batch_shapes_and_independence(model):
    prompts = torch.tensor([[1, 2, 3], [60, 61, 62]])
    ids = generate(model, prompts, 10)
    assert ids.shape == (2, 13)
    assert torch.equal(ids[1], generate(model, prompts[1], 10)[0])  # rows do not interact
    assert generate(model, None, 10, batch_size=4, do_sample=True, seed=0).shape == (4, 10)
    many = generate(model, prompts, 10, do_sample=True, num_return_sequences=3, seed=0)
    assert many.shape == (6, 13)
    assert torch.equal(many[:3, :3], prompts[:1].expand(3, -1))
    assert generate(model, prompts, 10, num_beams=4, num_return_sequences=2).shape == (4, 13)
    assert generate(model, prompts, 0).shape == (2, 3)


def test_scores_are_the_summed_log_probabilities(model):
    prompt = torch.tensor([[10, 270]])
    ids, scores = generate(model, prompt, 6, do_sample=True, seed=5, return_scores=True, rules=None)
    assert torch.allclose(scores, sequence_logprob(model, prompt, ids[:, 2:]), atol=1e-4)


def test_max_seconds_stops_each_row_and_pads():
    # A model that only ever emits TIME_SHIFT(50) = 0.5 s (id 305) or TIME_SHIFT(10) (id 265).
    class Clock(TinyGRU):
        def prefill(self, ids, **kw):
            return self._logits(ids.shape[0], torch.arange(ids.shape[0])), torch.arange(ids.shape[0])

        def step(self, ids, state):
            return self._logits(ids.shape[0], state), state

        def reorder_state(self, state, index):
            return state[index]

        def _logits(self, rows, which):
            out = torch.full((rows, 388), -1e9)
            out[which == 0, 305] = 0.0
            out[which == 1, 265] = 0.0
            return out

    ids = generate(Clock().eval(), None, 100, batch_size=2, max_seconds=1.0)
    assert ids.shape == (2, 10)  # row 1 needs 10 x 0.1 s
    assert ids[0].tolist() == [305, 305] + [PAD_ID] * 8
    assert ids[1].tolist() == [265] * 10
    beams = generate(Clock().eval(), None, 100, batch_size=2, max_seconds=1.0, num_beams=2)
    assert beams.shape == (2, 10) and beams[0, :2].tolist() == [305, 305] and beams[0, 2] == PAD_ID


# --- beam search ---------------------------------------------------------------------------------

V, L = 5, 4


@pytest.fixture(scope="module")
def small() -> TinyGRU:
    return TinyGRU(vocab=V, hidden=8, seed=2).eval()


def brute_force(model: TinyGRU, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    every = torch.tensor(list(itertools.product(range(V), repeat=L)))
    return every, sequence_logprob(model, prompt, every)


def reference_beam(model: TinyGRU, prompt: torch.Tensor, beams: int) -> list[tuple[float, list[int]]]:
    """Textbook beam search in plain Python over teacher-forced scores."""
    hyps: list[tuple[float, list[int]]] = [(0.0, [])]
    for _ in range(L):
        grown = [seq + [v] for _, seq in hyps for v in range(V)]
        scores = sequence_logprob(model, prompt, torch.tensor(grown))
        hyps = sorted(zip(scores.tolist(), grown, strict=True), key=lambda h: -h[0])[:beams]
    return hyps


def test_wide_beam_finds_the_brute_force_optimum(small):
    prompt = torch.tensor([[1, 3]])
    every, logp = brute_force(small, prompt)
    ids, score = generate(small, prompt, L, num_beams=V ** (L - 1), return_scores=True, rules=None)
    best = int(logp.argmax())
    assert ids[0, 2:].tolist() == every[best].tolist()
    assert math.isclose(float(score[0]), float(logp[best]), abs_tol=1e-4)


@pytest.mark.parametrize("beams", [2, 3])
def test_narrow_beam_matches_a_reference_beam_search(small, beams):
    prompt = torch.tensor([[4]])
    ids, scores = generate(small, prompt, L, num_beams=beams, num_return_sequences=beams, return_scores=True,
                           rules=None)
    ref = reference_beam(small, prompt, beams)
    assert [row[1:].tolist() for row in ids] == [seq for _, seq in ref]
    assert torch.allclose(scores, torch.tensor([s for s, _ in ref]), atol=1e-4)
    # the scores are the log-probabilities of the returned sequences
    assert torch.allclose(scores, sequence_logprob(small, prompt, ids[:, 1:]), atol=1e-4)


def test_one_beam_is_greedy_and_beam_batches_are_independent(small):
    prompts = torch.tensor([[0, 1], [2, 2]])
    raw = {"rules": None}
    assert torch.equal(generate(small, prompts, L, num_beams=1, **raw), generate(small, prompts, L, **raw))
    both = generate(small, prompts, L, num_beams=3, **raw)
    assert torch.equal(both[1], generate(small, prompts[1:], L, num_beams=3, **raw)[0])


def test_beam_sampling_is_seeded_and_valid(small):
    a = generate(small, torch.tensor([[1]]), L, num_beams=3, do_sample=True, seed=0, rules=None)
    b = generate(small, torch.tensor([[1]]), L, num_beams=3, do_sample=True, seed=0, rules=None)
    assert torch.equal(a, b) and a.shape == (1, 1 + L) and (a < V).all()


# --- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, word", [
    ({"temperature": 0}, "temperature"), ({"temperature": -1.0}, "temperature"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"),
    ({"num_beams": 0}, "num_beams"), ({"max_new_tokens": -3}, "max_new_tokens"),
    ({"num_beams": 2, "num_return_sequences": 3}, "num_return_sequences"),
    ({"num_return_sequences": 2}, "num_return_sequences"), ({"max_seconds": 0}, "max_seconds"),
])
def test_invalid_arguments_raise_one_clear_line(model, kwargs, word):
    args = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(UserError, match=word) as err:
        generate(model, torch.tensor([[1]]), **args)
    assert "\n" not in str(err.value)


def test_unknown_model_kwargs_are_a_user_error():
    class Strict(TinyGRU):
        def prefill(self, ids):
            return super().prefill(ids)

    with pytest.raises(UserError, match="tiny_gru model takes no prefill argument.*num_latents"):
        generate(Strict().eval(), None, 3, model_kwargs={"num_latents": 4})


def test_bad_prompts_and_empty_vocabulary_raise(model):
    with pytest.raises(UserError, match="prompt ids"):
        generate(model, torch.tensor([[400]]), 3)
    with pytest.raises(UserError, match="prompt ids"):
        generate(model, torch.zeros(1, 2, 3, dtype=torch.long), 3)

    class Broken(TinyGRU):
        def prefill(self, ids, **kw):
            logits, h = super().prefill(ids)
            return torch.full_like(logits, float("nan")), h

    with pytest.raises(UserError, match="no token left"):
        generate(Broken().eval(), None, 3, do_sample=True)
    with pytest.raises(UserError, match="no token left"):
        generate(Broken().eval(), None, 3)
