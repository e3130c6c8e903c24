"""The release prior: note ages as the decoder sees them, and a fit that recovers a known bias."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amadeus import codec, release_prior
from amadeus.models.perceiver_ar import PerceiverAR, PerceiverARConfig
from amadeus.models.performance_rnn import PerformanceRNN, PerformanceRNNConfig
from amadeus.vocab import NOTE_OFF, VOCAB_SIZE, shift_id


def test_note_ages_follow_decode():
    # on 60, 0.5 s, on 64, 0.3 s, off 60, stray off 70, 0.2 s, off 64
    ids = np.array([60, shift_id(50), 64, shift_id(30), NOTE_OFF + 60, NOTE_OFF + 70, shift_id(20), NOTE_OFF + 64])
    sounding, age = release_prior.note_ages(ids)
    assert not sounding[0].any()
    assert sounding[4, 60] and age[4, 60] == 80 and sounding[4, 64] and age[4, 64] == 30
    assert not sounding[5, 60] and not sounding[5, 70]            # the stray off changed nothing
    assert sounding[7, 64] and age[7, 64] == 50 and not sounding[7, 60]
    notes = codec.decode(ids).instruments[0].notes
    assert [(n.pitch, round(n.end - n.start, 2)) for n in notes] == [(60, 0.8), (64, 0.5)]


def test_oldest_note_of_a_pitch_is_the_one_released():
    ids = np.array([60, shift_id(10), 60, shift_id(10), NOTE_OFF + 60, shift_id(5), 62])
    _, age = release_prior.note_ages(ids)
    assert age[4, 60] == 20          # the first onset, as codec.decode closes the oldest
    assert age[6, 60] == 15          # then the second one, 5 + 10 steps old


def test_allowed_events_always_allow_the_truth():
    ids = np.array([NOTE_OFF + 60, 60, 60])   # a stray off, then a re-strike without a release
    sounding, _ = release_prior.note_ages(ids)
    allowed = release_prior.allowed_events(ids, sounding)
    assert allowed[np.arange(3), ids].all()
    assert not allowed[1, NOTE_OFF + 61] and allowed[2, NOTE_OFF + 60] and not allowed[1, NOTE_OFF + 60]


def test_fit_recovers_a_planted_release_bias():
    # Events drawn from a known distribution whose note-off logits carry bias 1.5 in every bucket;
    # the "model" handed to the fit is the same distribution without the bias.
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, VOCAB_SIZE)
    ids, logps = [], []
    state = []
    for _ in range(6000):
        logit = base.copy()
        mask = np.ones(VOCAB_SIZE, bool)
        mask[NOTE_OFF:NOTE_OFF + 128] = False
        mask[:128] = True
        for p in state:
            mask[NOTE_OFF + p] = True
            mask[p] = False
        biased = np.where(mask, logit, -np.inf)
        biased[NOTE_OFF:NOTE_OFF + 128] += 1.5
        prob = np.exp(biased - np.logaddexp.reduce(biased))
        e = int(rng.choice(VOCAB_SIZE, p=prob))
        ids.append(e)
        logps.append(logit - np.logaddexp.reduce(logit))
        if e < 128:
            state.append(e)
        elif e < 256:
            state.remove(e - NOTE_OFF)
    ids = np.array(ids)
    prior, figures = release_prior.fit([(np.array(logps), ids)])
    sounding, age = release_prior.note_ages(ids)
    t = np.flatnonzero((ids >= NOTE_OFF) & (ids < NOTE_OFF + 128))
    buckets = np.searchsorted(release_prior.AGE_EDGES, age[t, ids[t] - NOTE_OFF], side="right") - 1
    counts = np.bincount(buckets, minlength=len(release_prior.AGE_EDGES))
    well_observed = [prior.bias[k] for k in np.flatnonzero(counts >= 300)]
    assert well_observed and np.allclose(well_observed, 1.5, atol=0.25)
    assert figures["nll_after"] < figures["nll_before"]
    assert figures["note_off_probability_after"] == pytest.approx(figures["note_off_rate"], abs=0.01)


def test_prior_round_trips_and_rejects_nonsense():
    prior = release_prior.ReleasePrior([0.5] * len(release_prior.AGE_EDGES))
    assert release_prior.ReleasePrior.from_dict(prior.as_dict()) == prior
    assert release_prior.ReleasePrior.from_dict(None) is None
    with pytest.raises(ValueError):
        release_prior.ReleasePrior.from_dict({"bias": [0.0, 1.0], "edges": [10, 5]})
    table = prior.bias_table(700)
    assert table.shape == (701,) and float(table[650]) == 0.5


@pytest.mark.parametrize("family", ["performance_rnn", "perceiver_ar"])
def test_score_equals_the_models_own_predictions(family):
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB_SIZE, (42,))  # the last block is short
    if family == "performance_rnn":
        model = PerformanceRNN(PerformanceRNNConfig(embed_dim=8, input_size=16, hidden_size=16, num_layers=1,
                                                    controls=False)).eval()
        logits, state = model.prefill(ids[None, :10])
        assert torch.allclose(model.score(ids)[10], logits[0], atol=1e-5)
    else:
        model = PerceiverAR(PerceiverARConfig(max_seq_len=16, max_latents=4, num_channels=16, num_heads=2,
                                              num_self_attention_layers=1)).eval()
        scored = model.score(ids).float()
        # a block of 4 targets ending at event 20 is predicted as the training loss scores the
        # 17-event window ending there: 16 inputs, the last 4 of them latents
        expected = model.loss(ids[3:20][None])
        got = torch.nn.functional.cross_entropy(scored[16:20], ids[16:20])
        assert torch.allclose(got, expected, atol=1e-5)
        assert scored.shape == (42, 389)
        last = model.forward(torch.cat([ids[27:41]])[None], 12)[0]   # 12 prefix events, 2 targets
        assert torch.allclose(scored[40:], last, atol=1e-5)


def test_the_sampler_applies_the_prior_to_sounding_notes_only():
    from amadeus.performance_state import PerformanceState

    prompt = torch.tensor([[60, shift_id(50), 64, shift_id(10)]])   # 60 is 0.6 s old, 64 0.1 s
    flat = torch.zeros(1, VOCAB_SIZE)
    plain = PerformanceState(prompt).mask(flat)
    prior = release_prior.ReleasePrior([float(k) for k in range(len(release_prior.AGE_EDGES))])  # bias = bucket
    biased = PerformanceState(prompt, release_prior=prior).mask(flat)
    assert torch.equal(plain[0, :NOTE_OFF], biased[0, :NOTE_OFF])               # note-ons untouched
    assert float(biased[0, NOTE_OFF + 60] - plain[0, NOTE_OFF + 60]) == 5.0      # 60 steps: bucket 5 (50..75)
    assert float(biased[0, NOTE_OFF + 64] - plain[0, NOTE_OFF + 64]) == 2.0      # 10 steps: bucket 2 (10..20)
    assert biased[0, NOTE_OFF + 61] == float("-inf")                             # silent: still masked
