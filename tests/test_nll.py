"""amadeus.nll.mean_nll: the one NLL evaluator (training, quantize and evaluate all use it)."""

import contextlib
import math

import numpy as np
import pytest
import torch

from amadeus.nll import mean_nll


class UnigramModel(torch.nn.Module):
    """Predicts a fixed distribution; `loss` follows the model protocol (mean nats over targets)."""

    family = "unigram"

    def __init__(self, probs):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.log(torch.as_tensor(probs, dtype=torch.float32)))
        self.modes = []
        self.controls_seen = []

    def loss(self, ids, controls=None):
        self.modes.append(self.training)
        self.controls_seen.append(None if controls is None else controls.tolist())
        targets = ids[:, 1:]
        logits = self.logits.expand(*targets.shape, -1)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def test_mean_nll_is_the_mean_over_scored_positions_in_eval_mode():
    probs = np.array([0.5, 0.25, 0.25])
    model = UnigramModel(probs)
    model.train()
    windows = np.array([[0, 0, 0], [1, 2, 1], [0, 1, 2]])  # targets: 0 0 | 2 1 | 1 2
    expected = -np.mean(np.log(probs[[0, 0, 2, 1, 1, 2]]))
    assert mean_nll(model, windows, batch_size=2) == pytest.approx(expected, rel=1e-6)
    assert model.modes == [False, False] and model.training  # evaluated in eval mode, mode restored
    assert mean_nll(model, torch.tensor(windows), batch_size=1) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        mean_nll(model, np.zeros((0, 3), dtype=np.int64))


def test_mean_nll_passes_controls_batch_by_batch_under_amp():
    model = UnigramModel([0.5, 0.5])
    windows = np.zeros((3, 4), dtype=np.int64)
    controls = np.arange(3, dtype=np.float32)[:, None]
    entered = []

    @contextlib.contextmanager
    def amp():
        entered.append(True)
        yield

    assert mean_nll(model, windows, controls, batch_size=2, amp=amp) == pytest.approx(math.log(2), rel=1e-6)
    assert model.controls_seen == [[[0.0], [1.0]], [[2.0]]] and len(entered) == 2


def test_mean_nll_of_a_real_family_matches_its_loss_in_eval_mode():
    from amadeus.models.performance_rnn import PerformanceRNN
    from amadeus.windows import evenly_spaced_windows

    torch.manual_seed(0)
    config = PerformanceRNN.Config(embed_dim=8, input_size=8, hidden_size=16, num_layers=1, controls=True)
    model = PerformanceRNN(config)
    rng = np.random.default_rng(5)
    pieces = [np.concatenate([rng.integers(0, 128, 60), rng.integers(256, 300, 60)]) for _ in range(3)]
    ids, ctrl = evenly_spaced_windows(pieces, 31, max_windows=8, controls=True)
    nll = mean_nll(model, ids, ctrl, batch_size=3)
    model.eval()
    with torch.no_grad():
        assert nll == pytest.approx(float(model.loss(ids, ctrl)), rel=1e-5)
    assert 0.5 * math.log(388) < nll < 2 * math.log(388)  # untrained: near uniform
