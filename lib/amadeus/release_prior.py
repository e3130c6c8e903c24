"""The release prior: how likely a sounding note is to be released, by how long it has sounded.

Neither model family tracks reliably which of the 88 keys are down: measured on held-out MAESTRO
with the default Performance RNN, teacher-forced, it gives 17% of its probability to note-offs of
pitches that are silent and 9% to those of sounding pitches, against a true note-off rate of 25%.
Sampling with the impossible events masked (amadeus.performance_state) removes the first part but
still releases too rarely, so notes pile up. The prior corrects the release rate where it goes
wrong, without retraining: a product of experts,

    p'(e) ∝ p(e) * exp(bias[age bucket of e])   for e = note-off of a sounding pitch,
    p'(e) ∝ p(e)                                  for every other allowed event,

with one bias per age bucket (the age is the time since the onset of the note the note-off would
close), fitted by maximum likelihood on the training split with the model teacher-forced: a
convex problem in ~13 numbers. The fitted model is scored like any other (its NLL over allowed
events), and it applies the same way in every generation path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from amadeus.vocab import NOTE_OFF, NUM_PITCHES, TIME_SHIFT, VOCAB_SIZE, shift_steps

# Bucket k holds ages in [AGE_EDGES[k], AGE_EDGES[k + 1]) steps of 10 ms; the last is open-ended.
AGE_EDGES = (0, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 400, 600)


@dataclass
class ReleasePrior:
    """Per-age-bucket logit bias for note-offs of sounding pitches (zeros = no change)."""

    bias: list[float] = field(default_factory=lambda: [0.0] * len(AGE_EDGES))
    edges: list[int] = field(default_factory=lambda: list(AGE_EDGES))

    def as_dict(self) -> dict:
        return {"bias": [float(b) for b in self.bias], "edges": [int(e) for e in self.edges]}

    @classmethod
    def from_dict(cls, d: dict | None) -> ReleasePrior | None:
        if not d:
            return None
        bias, edges = list(d.get("bias") or []), list(d.get("edges") or [])
        if len(bias) != len(edges) or not edges or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError("release prior: expected as many biases as increasing age edges")
        return cls([float(b) for b in bias], [int(e) for e in edges])

    def bias_table(self, max_steps: int, device: torch.device | None = None) -> torch.Tensor:
        """bias for every age 0..max_steps (steps), as a float tensor: a lookup at sampling time."""
        ages = np.arange(max_steps + 1)
        bucket = np.searchsorted(np.asarray(self.edges), ages, side="right") - 1
        return torch.tensor(np.asarray(self.bias, dtype=np.float32)[bucket], device=device)


def note_ages(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Before each event: which pitches sound [N,128] (bool) and since how many steps [N,128] (int32).

    As codec.decode: a note-on opens a note, a note-off closes the oldest open note of its pitch, a
    stray note-off changes nothing. The age is that of the oldest open note (the one an off closes).
    """
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    sounding = np.zeros((n, NUM_PITCHES), dtype=bool)
    age = np.zeros((n, NUM_PITCHES), dtype=np.int32)
    onsets: list[list[int]] = [[] for _ in range(NUM_PITCHES)]
    first = np.full(NUM_PITCHES, -1, dtype=np.int64)  # onset step of the oldest open note, -1 if none
    steps = shift_steps(ids)
    now = 0
    for t, i in enumerate(ids.tolist()):
        open_ = first >= 0
        sounding[t] = open_
        age[t] = np.where(open_, now - first, 0)
        if i < NOTE_OFF:
            onsets[i].append(now)
            if first[i] < 0:
                first[i] = now
        elif i < TIME_SHIFT:
            q = onsets[i - NOTE_OFF]
            if q:
                q.pop(0)
                first[i - NOTE_OFF] = q[0] if q else -1
        now += int(steps[t])
    return sounding, age


def allowed_events(ids: np.ndarray, sounding: np.ndarray) -> np.ndarray:
    """[N,388] bool: the events the sampler allows before each position (structure only: no note-off
    of a silent pitch, no note-on of a sounding one); the true event is always counted as allowed."""
    n = len(ids)
    allowed = np.ones((n, VOCAB_SIZE), dtype=bool)
    allowed[:, :NOTE_OFF] = ~sounding
    allowed[:, NOTE_OFF:TIME_SHIFT] = sounding
    allowed[np.arange(n), np.asarray(ids, dtype=np.int64)] = True
    return allowed


@dataclass
class _Terms:
    """What the fit needs from one piece: per position, log-sum-exp of the allowed events that the
    prior does not touch, of the allowed note-offs in each age bucket, and the target's own term."""

    rest: np.ndarray      # [N]
    buckets: np.ndarray   # [N, K]
    target: np.ndarray    # [N] log p(target)
    target_bucket: np.ndarray  # [N] the target's bucket, -1 when the target is not a note-off


def _terms(logp: np.ndarray, ids: np.ndarray, edges: Sequence[int]) -> _Terms:
    ids = np.asarray(ids, dtype=np.int64)
    sounding, age = note_ages(ids)
    allowed = allowed_events(ids, sounding)
    lp = np.where(allowed, logp[:, :VOCAB_SIZE], -np.inf)
    bucket = np.searchsorted(np.asarray(edges), age, side="right") - 1  # [N,128]
    offs = lp[:, NOTE_OFF:TIME_SHIFT]
    released = sounding  # note-offs of sounding pitches get the bias
    rest = np.logaddexp.reduce(np.concatenate([lp[:, :NOTE_OFF], np.where(released, -np.inf, offs),
                                               lp[:, TIME_SHIFT:]], axis=1), axis=1)
    k = len(edges)
    per = np.full((len(ids), k), -np.inf)
    for b in range(k):
        sel = released & (bucket == b)
        per[:, b] = np.logaddexp.reduce(np.where(sel, offs, -np.inf), axis=1)
    is_off = (ids >= NOTE_OFF) & (ids < TIME_SHIFT)
    pitch = np.where(is_off, ids - NOTE_OFF, 0)
    rows = np.arange(len(ids))
    tb = np.where(is_off & sounding[rows, pitch], bucket[rows, pitch], -1)
    return _Terms(rest, per, lp[rows, ids], tb)


def _stack(scored: Iterable[tuple[np.ndarray, np.ndarray]], edges: Sequence[int]) -> tuple[torch.Tensor, ...]:
    parts = [_terms(lp, ids, edges) for lp, ids in scored]
    rest = torch.tensor(np.concatenate([p.rest for p in parts]))
    # an empty bucket is -inf; a finite stand-in keeps the gradients finite (exp(-1e4) is 0 anyway)
    buckets = torch.tensor(np.concatenate([p.buckets for p in parts])).clamp(min=-1e4)
    target = torch.tensor(np.concatenate([p.target for p in parts]))
    tb = torch.tensor(np.concatenate([p.target_bucket for p in parts]))
    return rest, buckets, target, tb


def _nll(data: tuple[torch.Tensor, ...], b: torch.Tensor) -> torch.Tensor:
    """Mean NLL over allowed events with the biases b."""
    rest, buckets, target, tb = data
    norm = torch.logaddexp(rest, torch.logsumexp(buckets + b, dim=1))
    gain = torch.where(tb >= 0, b[tb.clamp(min=0)], torch.zeros_like(target))
    return (norm - target - gain).mean()


def _figures(data: tuple[torch.Tensor, ...], b: torch.Tensor) -> dict:
    rest, buckets, _, tb = data
    zero = torch.zeros_like(b)

    def off_mass(v: torch.Tensor) -> float:
        released = torch.logsumexp(buckets + v, dim=1)
        return float(torch.exp(released - torch.logaddexp(rest, released)).mean())

    return {"nll_before": round(float(_nll(data, zero)), 4), "nll_after": round(float(_nll(data, b)), 4),
            "note_off_probability_before": round(off_mass(zero), 4),
            "note_off_probability_after": round(off_mass(b), 4),
            "note_off_rate": round(float((tb >= 0).double().mean()), 4), "events": int(len(tb))}


def score(prior: ReleasePrior, scored: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict:
    """The figures of `fit` for a given prior on other data (e.g. the validation split)."""
    data = _stack(scored, prior.edges)
    return _figures(data, torch.tensor(prior.bias, dtype=torch.float64))


def fit(scored: Iterable[tuple[np.ndarray, np.ndarray]], edges: Sequence[int] = AGE_EDGES,
        l2: float = 1e-5) -> tuple[ReleasePrior, dict]:
    """Fit the biases on (log-probabilities [N,V], ids [N]) pairs, teacher-forced.

    Returns the prior and its figures: mean NLL over allowed events before and after, and the mean
    probability the model gives to note-offs before and after vs their true rate.
    """
    data = _stack(scored, edges)
    bias = torch.zeros(len(edges), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([bias], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _nll(data, bias) + l2 * (bias ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    b = bias.detach()
    figures = _figures(data, b)
    return ReleasePrior([round(float(x), 4) for x in b], list(edges)), figures



def _scored(model: torch.nn.Module, pieces: Sequence[np.ndarray], events_per_piece: int,
            device: torch.device | str) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    for ids in pieces:
        ids = np.asarray(ids, dtype=np.int64)[:events_per_piece]
        if len(ids):
            logits = model.score(torch.as_tensor(ids, device=device)).float()[:, :VOCAB_SIZE]
            yield logits.log_softmax(-1).cpu().numpy(), ids


@torch.no_grad()
def fit_model(model: torch.nn.Module, train: Sequence[np.ndarray], validation: Sequence[np.ndarray] = (),
              events_per_piece: int = 3000, device: torch.device | str = "cpu") -> tuple[ReleasePrior, dict]:
    """Fit the prior of `model` (any family with `score`) on the first events of each training piece,
    and measure it on the validation pieces: figures `train_*` and `validation_*`.

    3,000 events per piece (about 40 s of music) keep the fit to seconds while covering every
    age bucket thousands of times on the default data.
    """
    was_training = model.training
    model.eval()
    try:
        prior, figures = fit(_scored(model, train, events_per_piece, device))
        out = {f"train_{k}": v for k, v in figures.items()}
        if len(validation):
            out.update({f"validation_{k}": v for k, v in
                        score(prior, _scored(model, validation, events_per_piece, device)).items()})
        return prior, out
    finally:
        model.train(was_training)
