"""Performance RNN model, control features and training windows (augmentation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amadeus.controls import CONTROL_DIM, DENSITY, HISTOGRAM, control_vector, density_bin, piece_controls
from amadeus.models import FAMILIES, build_model, config_class, parameter_count
from amadeus.models.performance_rnn import PerformanceRNN, PerformanceRNNConfig
from amadeus.vocab import VOCAB_SIZE
from amadeus.windows import Piece, WindowSampler, evenly_spaced_windows, make_window, stretch_events, unigram_nll

SHIFT = 255  # + k steps of 10 ms
VEL = 355    # + bin


def synthetic_piece(n_notes: int, seed: int, low: int = 40, high: int = 90) -> np.ndarray:
    """A plausible event array: velocity changes, overlapping notes, gaps of 10 ms .. 2.5 s."""
    rng = np.random.default_rng(seed)
    events, t, pending = [], 0, []
    for _ in range(n_notes):
        gap = int(rng.choice([0, 5, 12, 25, 50, 130, 250]))
        while gap:
            k = min(gap, 100)
            events.append(SHIFT + k)
            gap -= k
            t += k
            pending = [(p, when) for p, when in pending if not (when <= t and events.append(128 + p) is None)]
        if rng.random() < 0.3:
            events.append(VEL + int(rng.integers(1, 33)))
        p = int(rng.integers(low, high + 1))
        events.append(p)
        pending.append((p, t + int(rng.integers(5, 80))))
    events += [SHIFT + 100] + [128 + p for p, _ in pending]
    return np.array(events, dtype=np.uint16)


def small_model(**kw) -> PerformanceRNN:
    cfg = dict(embed_dim=16, input_size=24, hidden_size=32, num_layers=2, dropout=0.0)
    cfg.update(kw)
    torch.manual_seed(0)
    return PerformanceRNN(PerformanceRNNConfig(**cfg))


def test_registry_builds_from_mapping_and_rejects_bad_keys():
    assert "performance_rnn" in FAMILIES
    assert config_class("performance_rnn") is PerformanceRNNConfig
    model = build_model("performance_rnn", {"hidden_size": 8, "input_size": 8, "embed_dim": 4, "num_layers": 1})
    assert model.gru.hidden_size == 8 and model.family == "performance_rnn"
    from amadeus.errors import UserError

    with pytest.raises(UserError, match="models.performance_rnn.hiden"):
        build_model("performance_rnn", {"hiden": 8})
    with pytest.raises(UserError, match="unknown"):
        build_model("nope", {})


def test_shapes_and_quantization_hooks():
    model = small_model()
    ids = torch.randint(0, VOCAB_SIZE, (3, 11))
    assert model(ids).shape == (3, 11, VOCAB_SIZE)
    ctrl = torch.rand(3, 11, CONTROL_DIM)
    loss = model.loss(ids, ctrl)
    assert loss.dim() == 0 and torch.isfinite(loss)
    # amadeus.quant swaps these two attributes: they must be the plain modules.
    assert type(model.gru) is torch.nn.GRU and model.gru.batch_first
    assert type(model.head) is torch.nn.Linear and model.head.out_features == VOCAB_SIZE
    logits, state = model.prefill(ids[:, :4])
    assert logits.shape == (3, VOCAB_SIZE) and [h.shape for h in state.h] == [(3, 32)] * 2
    logits, state2 = model.step(ids[:, 4], state)
    assert logits.shape == (3, VOCAB_SIZE)
    index = torch.tensor([2, 2, 0])
    moved = model.reorder_state(state2, index)
    for layer in range(2):
        assert torch.equal(moved.h[layer][0], state2.h[layer][2]) and torch.equal(moved.h[layer][2], state2.h[layer][0])
    assert parameter_count(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("with_controls", [False, True])
def test_stepwise_generation_matches_full_window_forward(with_controls):
    model = small_model(dropout=0.3).eval()  # eval: dropout off, the two paths must agree
    ids = torch.randint(0, VOCAB_SIZE, (2, 25))
    ctrl = torch.from_numpy(np.stack([control_vector(None, 4), control_vector([1] + [0] * 11, 30)]))
    ctrl = ctrl if with_controls else None
    start = torch.full((2, 1), model.config.start_id)
    with torch.no_grad():
        full = model(torch.cat([start, ids], dim=1), ctrl)  # [2, 26, V]
        logits, state = model.prefill(ids[:, :0], ctrl)
        stepped = [logits]
        for t in range(ids.shape[1]):
            logits, state = model.step(ids[:, t], state)
            stepped.append(logits)
        prefilled, _ = model.prefill(ids[:, :10], ctrl)
    torch.testing.assert_close(torch.stack(stepped, dim=1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prefilled, full[:, 10], atol=1e-5, rtol=1e-5)


def test_loss_predicts_every_event_from_the_start_token():
    model = small_model().eval()
    ids = torch.randint(0, VOCAB_SIZE, (2, 9))
    inputs = torch.cat([torch.full((2, 1), model.config.start_id), ids[:, :-1]], dim=1)
    expected = torch.nn.functional.cross_entropy(model(inputs).reshape(-1, VOCAB_SIZE), ids.reshape(-1))
    torch.testing.assert_close(model.loss(ids), expected)


def test_control_dropout_shows_windows_without_controls():
    model = small_model(control_dropout=1.0)
    ids = torch.randint(0, VOCAB_SIZE, (4, 12))
    ctrl = torch.rand(4, 12, CONTROL_DIM)
    hidden = model.train().loss(ids, ctrl)  # every window hidden -> same as no controls
    torch.testing.assert_close(hidden, model.loss(ids))
    shown = model.eval().loss(ids, ctrl)  # eval never hides
    assert not torch.allclose(shown, model.loss(ids))
    plain = small_model(controls=False)
    torch.testing.assert_close(plain.loss(ids, ctrl), plain.loss(ids))  # controls ignored when off


def test_loss_decreases_on_a_tiny_corpus():
    pieces = [synthetic_piece(150, seed) for seed in range(3)]
    sampler = WindowSampler(pieces, window=30, stride=5, controls=True, seed=1)
    model = small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    ids, ctrl = sampler.batch(0, 16)
    with torch.no_grad():
        first = float(model.loss(ids, ctrl))
    for step in range(40):
        ids, ctrl = sampler.batch(step, 16)
        loss = model.loss(ids, ctrl)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ids, ctrl = sampler.batch(1000, 16)
    with torch.no_grad():
        last = float(model.eval().loss(ids, ctrl))
    assert last < first - 1.5, (first, last)  # from ~log(388) to well below it


# --- control features ----------------------------------------------------------------------------

def test_controls_on_a_hand_made_example():
    # t=0: C4 on; +1 s; t=100: E4 on; +1 s; +1 s; t=300: G4 on; C4 off
    ids = np.array([60, SHIFT + 100, 64, SHIFT + 100, SHIFT + 100, 67, 128 + 60])
    c = piece_controls(ids)
    assert c.shape == (7, CONTROL_DIM)
    # position 0 (t=0): C and E start within 2 s
    np.testing.assert_allclose(c[0, HISTOGRAM], np.eye(12)[0] * 0.5 + np.eye(12)[4] * 0.5)
    assert c[0, DENSITY].argmax() == density_bin(2) == 0 and c[0, DENSITY].sum() == 1
    # position 1 (the shift at t=0): C already played; E at t=100 remains (G at t=300 is too late)
    np.testing.assert_allclose(c[1, HISTOGRAM], np.eye(12)[4])
    # position 3 (t=100, after E): G at t=300 is exactly 2 s ahead -> outside the window: uniform
    np.testing.assert_allclose(c[3, HISTOGRAM], np.full(12, 1 / 12))
    # position 4 (t=200): G at t=300 is inside
    np.testing.assert_allclose(c[4, HISTOGRAM], np.eye(12)[7])
    assert c[6, DENSITY].argmax() == 0  # nothing left: density bin 0, uniform histogram
    assert list(density_bin(np.array([0, 3, 4, 6, 7, 33, 34, 100]))) == [0, 0, 1, 1, 2, 10, 11, 11]


def test_control_vector():
    v = control_vector([2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0], notes_per_2s=40)
    assert v[0] == v[4] == 0.5 and v[DENSITY][11] == 1
    with pytest.raises(ValueError):
        control_vector([0] * 12)


# --- windows and augmentation --------------------------------------------------------------------

def test_windows_equal_the_augmented_piece_and_its_controls():
    ids = synthetic_piece(300, 7)
    piece = Piece.of(ids)
    for start in (0, 13, 200):
        tok, ctrl = make_window(piece, start, 81, controls=True)
        np.testing.assert_array_equal(tok, ids[start:start + 81])
        np.testing.assert_allclose(ctrl, piece_controls(ids)[start:start + 81])
    up = np.where(ids < 256, ids + 5, ids)
    tok, ctrl = make_window(piece, 40, 81, transpose=5, controls=True)
    np.testing.assert_array_equal(tok, up[40:121])
    np.testing.assert_allclose(ctrl, piece_controls(up)[40:121])  # histogram follows the notes
    for factor in (0.9, 1.07):
        stretched = stretch_events(ids, factor)
        tok, ctrl = make_window(piece, 0, 81, stretch=factor, controls=True)
        np.testing.assert_array_equal(tok, stretched[:81])
        np.testing.assert_allclose(ctrl, piece_controls(stretched)[:81])
    np.testing.assert_array_equal(stretch_events(ids, 1.0), ids)


def test_stretch_scales_time_without_drift():
    ids = synthetic_piece(200, 3)
    total = lambda a: int(np.where((a >= 256) & (a <= 355), a - 255, 0).sum())  # noqa: E731
    for factor in (0.5, 0.95, 1.05, 2.0):
        out = stretch_events(ids, factor)
        assert abs(total(out) - total(ids) * factor) <= 1  # absolute rounding: within one 10 ms step
        np.testing.assert_array_equal(out[(out < 256) | (out > 355)], ids[(ids < 256) | (ids > 355)])


def test_augmentation_keeps_ids_valid_and_in_piano_range():
    pieces = [synthetic_piece(400, 1, low=21, high=100), synthetic_piece(400, 2, low=30, high=108)]
    assert Piece.of(pieces[0]).transpositions(12) == (0, 8)
    assert Piece.of(pieces[1]).transpositions(12) == (-9, 0)
    sampler = WindowSampler(pieces, window=64, stride=4, transpose=12, stretch=0.3, controls=True, seed=5)
    seen_shift = set()
    for step in range(20):
        ids, ctrl = sampler.batch(step, 8)
        assert ids.shape == (8, 65) and ctrl.shape == (8, 65, CONTROL_DIM)
        assert int(ids.min()) >= 0 and int(ids.max()) < VOCAB_SIZE
        notes = ids[ids < 256] % 128
        assert int(notes.min()) >= 21 and int(notes.max()) <= 108
        torch.testing.assert_close(ctrl[..., HISTOGRAM].sum(-1), torch.ones(8, 65))
        seen_shift.update(ids[(ids > 255) & (ids <= 355)].tolist())
    assert len(seen_shift) > 20  # stretched shifts take many values
    again, _ = WindowSampler(pieces, window=64, stride=4, transpose=12, stretch=0.3, controls=True,
                             seed=5).batch(19, 8)
    assert torch.equal(again, ids)  # a batch depends only on (seed, step)


def test_evenly_spaced_windows_and_unigram():
    pieces = [synthetic_piece(100, s) for s in range(3)]
    ids, ctrl = evenly_spaced_windows(pieces, window=49, max_windows=5, controls=True)
    assert ids.shape == (5, 50) and ctrl.shape == (5, 50, CONTROL_DIM)
    again, _ = evenly_spaced_windows(pieces, window=49, max_windows=5)
    assert torch.equal(ids, again)
    counts = np.bincount(np.concatenate(pieces).astype(int), minlength=VOCAB_SIZE) + 1
    expected = -np.log(counts / counts.sum())[ids.reshape(-1).numpy()].mean()
    assert unigram_nll(pieces, ids) == pytest.approx(expected)


@torch.no_grad()
def test_generation_plan_follows_changed_weights_and_controls():
    """The cached step plan and input-gate table are rebuilt when a weight is updated in place (as an
    optimizer step does) or the held controls change; otherwise prefill reuses them."""
    model = small_model().eval()
    ids = torch.randint(0, VOCAB_SIZE, (1, 6))
    start = torch.full((1, 1), model.config.start_id)

    def stepped_matches_forward(ctrl):
        logits, state = model.prefill(ids[:, :3], ctrl)
        logits, state = model.step(ids[:, 3], state)
        full = model(torch.cat([start, ids[:, :4]], dim=1), ctrl)[:, -1]
        torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)
        return state.plan

    first = stepped_matches_forward(None)
    assert stepped_matches_forward(None) is first  # nothing changed: reused
    model.embed.weight.add_(0.5)  # in place, as AdamW updates it
    changed = stepped_matches_forward(None)
    assert changed is not first
    ctrl = torch.from_numpy(control_vector([1] + [0] * 11, 30))[None]
    assert stepped_matches_forward(ctrl) is not changed
