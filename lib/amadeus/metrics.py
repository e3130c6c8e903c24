"""How good is the music a model makes: MGEval-style statistics against real pieces (the models'
NLL is amadeus.nll).

The statistics follow MGEval (Yang & Lerch, "On the evaluation of generative models in music",
Neural Computing and Applications 32, 2020; docs/evaluation.md), on seconds instead of bars because
performance MIDI has no reliable beat grid:

1. every piece (or N-second segment) gets one value per feature (a number or a normalised histogram);
2. intra-set distances: within the reference set R, each item against every other one (leave-one-out);
   inter-set distances: each item of R against every item of the candidate set C (Euclidean);
3. each distance sample is smoothed into a density with a Gaussian KDE (Scott's bandwidth);
4. overlap area OA = integral of min(p_intra, p_inter) (1 = the candidate is as close to R as R is to
   itself) and KL = KL(p_intra || p_inter) in nats (0 = same). The direction: the reference's own
   spread is the "true" distribution P, the candidate-to-reference distances are Q; KL(P||Q) is large
   when the candidate puts little mass where real pieces differ from each other by typical amounts.

Degenerate sets never give NaN. A reference with one item has no leave-one-out pairs: its intra-set
sample is {0} (an item's distance to itself). A sample with no spread (all distances equal) gets a
bandwidth taken from the other sample, or, if both are constant, a narrow floor (1e-3 of the largest
distance, at least 1e-3) so equal constants give OA = 1 and KL = 0 and different ones OA = 0.
Densities are evaluated in the log domain, so KL stays finite however far apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pretty_midi

# --------------------------------------------------------------------------------------------------
# Notes and segments

GRID = 0.01  # the codec's 10 ms time grid: onsets closer than this are one chord


def note_array(midi: pretty_midi.PrettyMIDI | np.ndarray) -> np.ndarray:
    """Notes as a float array [N, 4] of (start, end, pitch, velocity), sorted by start then pitch."""
    if isinstance(midi, pretty_midi.PrettyMIDI):
        notes = [(n.start, n.end, n.pitch, n.velocity)
                 for inst in midi.instruments if not inst.is_drum for n in inst.notes]
        arr = np.array(notes, dtype=np.float64).reshape(-1, 4)
    else:
        arr = np.asarray(midi, dtype=np.float64).reshape(-1, 4)
    return arr[np.lexsort((arr[:, 2], arr[:, 0]))] if len(arr) else arr


def segments(notes: np.ndarray, seconds: float, min_notes: int = 4) -> list[np.ndarray]:
    """Cut a piece into consecutive `seconds`-long segments by note onset, times shifted to 0.

    Notes keep their full duration (a note starting near the end of a segment still counts its true
    length). Segments with fewer than `min_notes` notes (silence, the ragged end) are dropped.
    """
    notes = note_array(notes)
    if len(notes) == 0:
        return []
    index = np.floor(notes[:, 0] / seconds).astype(np.int64)
    out = []
    for k in np.unique(index):
        seg = notes[index == k].copy()
        if len(seg) >= min_notes:
            seg[:, :2] -= k * seconds
            out.append(seg)
    return out


# --------------------------------------------------------------------------------------------------
# Features of one piece or segment: a 1-D vector each (length 1 for scalar features)

# Log-spaced bins (seconds) for inter-onset intervals and durations: 10 ms to 4 s, plus under/over.
TIME_BINS = np.concatenate([[0.0], np.geomspace(0.02, 4.0, 10), [np.inf]])
VELOCITY_BINS = np.linspace(0, 128, 9)  # 8 bins of 16 velocity steps


def _histogram(values: np.ndarray, bins: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    h, _ = np.histogram(values, bins=bins, weights=weights)
    s = h.sum()
    return h / s if s > 0 else np.zeros(len(bins) - 1)


def pitch_class_histogram(notes: np.ndarray) -> np.ndarray:
    """12 bins, each note weighted by its duration (as MGEval does), normalised to sum 1."""
    return _histogram(notes[:, 2] % 12, np.arange(13), weights=notes[:, 1] - notes[:, 0])


def pitch_range(notes: np.ndarray) -> np.ndarray:
    """Highest minus lowest pitch, in semitones."""
    return np.array([notes[:, 2].max() - notes[:, 2].min()])


def notes_per_second(notes: np.ndarray) -> np.ndarray:
    """Notes over the span from the first onset to the last note end."""
    span = max(notes[:, 1].max() - notes[:, 0].min(), GRID)
    return np.array([len(notes) / span])


def _onsets(notes: np.ndarray) -> np.ndarray:
    return np.unique(np.round(notes[:, 0] / GRID)) * GRID


def inter_onset_intervals(notes: np.ndarray) -> np.ndarray:
    """Histogram (log-spaced bins) of the gaps between successive distinct onsets (chords count once)."""
    return _histogram(np.diff(_onsets(notes)), TIME_BINS)


def durations(notes: np.ndarray) -> np.ndarray:
    """Histogram (log-spaced bins) of note durations in seconds."""
    return _histogram(notes[:, 1] - notes[:, 0], TIME_BINS)


def velocities(notes: np.ndarray) -> np.ndarray:
    """Histogram of MIDI velocities in 8 bins of 16."""
    return _histogram(notes[:, 3], VELOCITY_BINS)


def polyphony(notes: np.ndarray) -> np.ndarray:
    """Mean number of sounding notes over the 10 ms frames where at least one note sounds (as MusPy)."""
    start = np.round(notes[:, 0] / GRID).astype(np.int64)
    end = np.maximum(np.round(notes[:, 1] / GRID).astype(np.int64), start + 1)
    origin = start.min()
    counts = np.zeros(end.max() - origin + 1, dtype=np.int64)
    np.add.at(counts, start - origin, 1)
    np.add.at(counts, end - origin, -1)
    sounding = np.cumsum(counts)[:-1]
    active = sounding[sounding > 0]
    return np.array([active.mean() if len(active) else 0.0])


FEATURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "pitch_class_histogram": pitch_class_histogram,
    "pitch_range": pitch_range,
    "notes_per_second": notes_per_second,
    "inter_onset_intervals": inter_onset_intervals,
    "durations": durations,
    "velocities": velocities,
    "polyphony": polyphony,
}
SCALAR_FEATURES = ("pitch_range", "notes_per_second", "polyphony")


def features(items: Sequence[np.ndarray | pretty_midi.PrettyMIDI]) -> dict[str, np.ndarray]:
    """Feature name -> [n_items, dim] values. Every item needs at least one note."""
    notes = [note_array(x) for x in items]
    if any(len(n) == 0 for n in notes):
        raise ValueError("every item needs at least one note (drop empty segments first)")
    return {name: np.stack([f(n) for n in notes]).reshape(len(notes), -1) for name, f in FEATURES.items()}


# --------------------------------------------------------------------------------------------------
# MGEval comparison: distances -> KDE -> overlap area and KL


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def intra_set_distances(values: np.ndarray) -> np.ndarray:
    """Leave-one-out distances within a set (all ordered pairs i != j); {0} for a one-item set."""
    n = len(values)
    if n < 2:
        return np.zeros(1)
    d = _pairwise(values, values)
    return d[~np.eye(n, dtype=bool)]


def inter_set_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances from every item of `a` to every item of `b`."""
    return _pairwise(a, b).ravel()


def scott_bandwidth(sample: np.ndarray) -> float:
    """Scott's rule for one dimension: std * n^(-1/5) (scipy.stats.gaussian_kde's default)."""
    if len(sample) < 2:
        return 0.0
    return float(np.std(sample, ddof=1) * len(sample) ** (-1 / 5))


class GaussianKDE:
    """A 1-D Gaussian kernel density estimate evaluated in the log domain (no underflow to -inf)."""

    def __init__(self, sample: np.ndarray, bandwidth: float):
        self.sample = np.asarray(sample, dtype=np.float64).ravel()
        self.bandwidth = float(bandwidth)

    def log_pdf(self, x: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).ravel()
        out = np.empty_like(x)
        norm = math.log(len(self.sample) * self.bandwidth * math.sqrt(2 * math.pi))
        rows = max(1, chunk // len(self.sample))  # bound the [grid, sample] block to `chunk` floats
        for i in range(0, len(x), rows):
            z = -0.5 * ((x[i:i + rows, None] - self.sample[None, :]) / self.bandwidth) ** 2
            top = z.max(axis=1, keepdims=True)  # log-sum-exp: exact far into the tails
            out[i:i + rows] = (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True))).ravel()
        return out - norm

    def pdf(self, x: np.ndarray) -> np.ndarray:
        return np.exp(self.log_pdf(x))


def _bandwidths(p: np.ndarray, q: np.ndarray) -> tuple[float, float]:
    hp, hq = scott_bandwidth(p), scott_bandwidth(q)
    scale = max(float(np.abs(np.concatenate([p, q])).max()), 1.0)
    floor = 1e-3 * scale  # two constants become narrow bumps: equal -> OA 1, KL 0; apart -> OA 0
    hp = hp if hp > 0 else hq  # a constant sample borrows the other's bandwidth
    hq = hq if hq > 0 else hp
    return max(hp, floor), max(hq, floor)


def compare_samples(p: np.ndarray, q: np.ndarray, grid_points: int = 512,
                    max_sample: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Overlap area of the KDEs of `p` and `q`, and KL(p || q) in nats, on a common grid.

    Samples longer than `max_sample` are subsampled (seeded) to keep the KDE cheap; the densities
    are integrated with the trapezoid rule over both supports plus six bandwidths each side.
    """
    rng = np.random.default_rng(seed)
    p, q = (np.asarray(s, dtype=np.float64).ravel() for s in (p, q))
    if len(p) == 0 or len(q) == 0:
        raise ValueError("both distance samples need at least one value")
    p = rng.choice(p, max_sample, replace=False) if len(p) > max_sample else p
    q = rng.choice(q, max_sample, replace=False) if len(q) > max_sample else q
    hp, hq = _bandwidths(p, q)
    # Six bandwidths beyond the data lose < 1e-8 of the mass; a quarter of the narrower bandwidth per
    # grid step keeps the trapezoid rule accurate for narrow bumps far apart (capped for speed).
    lo, hi = min(p.min(), q.min()) - 6 * max(hp, hq), max(p.max(), q.max()) + 6 * max(hp, hq)
    points = int(np.clip(np.ceil((hi - lo) / (min(hp, hq) / 4)), grid_points, 16 * grid_points))
    x = np.linspace(lo, hi, points)
    log_p, log_q = GaussianKDE(p, hp).log_pdf(x), GaussianKDE(q, hq).log_pdf(x)
    dens_p, dens_q = np.exp(log_p), np.exp(log_q)
    overlap = float(np.trapezoid(np.minimum(dens_p, dens_q), x))
    # Normalise p on the grid so KL is not biased by discretisation; q's log is used as is.
    mass = float(np.trapezoid(dens_p, x))
    kl = float(np.trapezoid(dens_p * (log_p - log_q), x)) / mass
    return min(max(overlap, 0.0), 1.0), max(kl, 0.0)


@dataclass
class FeatureComparison:
    overlap: float  # overlap area of intra(reference) and inter(reference, candidate): higher = closer
    kl: float  # KL(intra || inter) in nats: lower = closer
    reference_mean: float | None = None  # scalar features only: the mean value in each set
    candidate_mean: float | None = None

    def as_dict(self) -> dict:
        d = {"overlap": round(self.overlap, 4), "kl": round(self.kl, 4)}
        if self.reference_mean is not None:
            d["reference_mean"] = round(self.reference_mean, 4)
            d["candidate_mean"] = round(self.candidate_mean, 4)
        return d


def compare_sets(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                 seed: int = 0) -> dict[str, FeatureComparison]:
    """MGEval per feature: OA and KL between intra(reference) and inter(reference, candidate).

    Both arguments are outputs of `features()`. An identical candidate gives OA near 1 and KL near 0.
    """
    out = {}
    for name in FEATURES:
        ref, cand = reference[name], candidate[name]
        if len(ref) == 0 or len(cand) == 0:
            raise ValueError(f"{name}: both sets need at least one item")
        overlap, kl = compare_samples(intra_set_distances(ref), inter_set_distances(ref, cand), seed=seed)
        comparison = FeatureComparison(overlap, kl)
        if name in SCALAR_FEATURES:
            comparison.reference_mean = float(ref.mean())
            comparison.candidate_mean = float(cand.mean())
        out[name] = comparison
    return out
