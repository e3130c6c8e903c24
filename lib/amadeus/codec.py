"""MIDI <-> the 388-id performance event vocabulary (Magenta's performance representation).

The ids themselves are defined in `amadeus.vocab`.

Encoding follows note_seq 0.0.5 event for event (docs/vocabulary.md#note_seq-encoding): `apply_sustain_control_changes`
folds the sustain pedal into note durations, `quantize_note_sequence_absolute(ns, 100)` snaps times
to an absolute 10 ms grid, `Performance` orders events and `PerformanceOneHotEncoding(32)` numbers
them. The "perceiver-io" flavour reproduces krasserm/perceiver-io's `midi_processor.encode_midi`
(docs/vocabulary.md#perceiver-io-encoding) on the same sustain-folded notes, for checkpoints imported from there.

Two front ends share one core: `encode` reads a `PrettyMIDI`, `encode_path` parses the file with
symusic (C++, ~400x faster than pretty_midi, docs/midi-parsing.md#measured) and converts ticks to seconds the way
pretty_midi does, bit for bit (files where notes of one pitch overlap go through pretty_midi, as
symusic pairs their note-offs differently). Both reduce the piece to note arrays and call
`encode_notes`, which is vectorised with numpy (no per-note Python loop).
"""

from __future__ import annotations

import collections
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pretty_midi

from amadeus.errors import UserError
from amadeus.params import knob
from amadeus.vocab import (
    MAX_SHIFT_STEPS,
    NOTE_OFF,
    NOTE_ON,
    SHIFT_1S,
    STEPS_PER_SECOND,
    TIME_SHIFT,
    VELOCITY,
    VELOCITY_BIN_SIZE,
    VOCAB_SIZE,
    total_steps,
)

# Bump when the ids written for the same MIDI file and params change (stored in manifests).
CODEC_VERSION = "1"
FLAVOURS = ("magenta", "perceiver-io")

_SUSTAIN_CC = 64
DEFAULT_VELOCITY = 100  # decode: the velocity of notes before any velocity event (note_seq's to_sequence default)


@dataclass
class CodecConfig:
    """params.yaml section `codec`."""

    flavour: str = knob("magenta", choices=FLAVOURS,
                        help="magenta: note_seq ids; perceiver-io: krasserm's binning and time shifts")
    max_note_seconds: float = knob(5.0, gt=0, help="decode closes notes left open this long (Magenta: 5 s)")
    max_piece_seconds: float = knob(4 * 3600.0, gt=0, help="preprocess skips longer pieces as broken")


# Why a file is refused, as counted in preprocess metrics (docs/midi-parsing.md#what-is-refused).
MIDI_ERROR_KINDS = ("unreadable", "empty", "too-large", "not-midi", "truncated", "bad-header", "bad-division",
                    "bad-tempo", "bad-timing", "corrupt", "too-many-events", "no-notes", "too-long")

# Bounds on what one file may cost (docs/midi-parsing.md#limits), far above real piano music (a note
# costs about 6 bytes of file with running status, so 16 MiB can hold 2.8 M notes).
MAX_FILE_BYTES = 16 << 20          # read no more; symusic holds ~2.5x the file while parsing
MAX_EVENTS = 1_000_000             # notes + controller changes + pitch bends + tempos; ~300 MB to encode
MAX_PRETTY_MIDI_NOTES = 200_000    # pretty_midi (pure Python) takes ~20 us and ~1 kB per note


class MidiError(UserError):
    """A MIDI file that cannot be encoded; `reason` is one line (not a MIDI file, truncated, ...) and
    `kind` one of MIDI_ERROR_KINDS."""

    def __init__(self, reason: str, path: str | Path | None = None, kind: str = "corrupt"):
        self.reason = " ".join(reason.split())   # one line whatever a parser said
        self.path = None if path is None else str(path)
        self.kind = kind
        super().__init__(self.reason if path is None else f"{path}: {self.reason}")


@dataclass
class EncodedPiece:
    ids: np.ndarray     # int32 event ids
    notes: int          # notes encoded (after sustain folding, drums excluded)
    seconds: float      # length of the event sequence (sum of its time shifts)


# ---- notes as arrays: what both front ends produce ----
@dataclass
class _Notes:
    pitch: np.ndarray        # int64, in the front end's note order (ties in sorting keep it)
    start: np.ndarray        # float64 seconds
    end: np.ndarray
    velocity: np.ndarray     # int64
    instrument: np.ndarray   # int64: sustain applies within an instrument only (note_seq)
    cc_time: np.ndarray      # CC64 events of all instruments (drums included, as note_seq)
    cc_value: np.ndarray
    cc_instrument: np.ndarray


def _notes_from_pretty_midi(pm: pretty_midi.PrettyMIDI) -> _Notes:
    """Notes of the non-drum instruments in note_seq's order (instrument, then list order)."""
    cols: list[tuple] = []
    ccs: list[tuple] = []
    for k, inst in enumerate(pm.instruments):
        if not inst.is_drum:
            cols += [(n.pitch, n.start, n.end, n.velocity, k) for n in inst.notes]
        ccs += [(c.time, c.value, k) for c in inst.control_changes if c.number == _SUSTAIN_CC]
    note = np.array(cols, dtype=np.float64).reshape(-1, 5)
    cc = np.array(ccs, dtype=np.float64).reshape(-1, 3)
    return _Notes(note[:, 0].astype(np.int64), note[:, 1], note[:, 2], note[:, 3].astype(np.int64),
                  note[:, 4].astype(np.int64), cc[:, 0], cc[:, 1].astype(np.int64), cc[:, 2].astype(np.int64))


def _tick_to_seconds(score, ticks: np.ndarray) -> np.ndarray:
    """Seconds of MIDI ticks, computed exactly as pretty_midi 0.2.x does (same float64 operations).

    pretty_midi keeps (tick, seconds-per-tick) segments starting at 120 bpm; a tempo at tick 0 replaces
    the list, a later one is appended when its scale differs; a tick's time is the segment's start
    time plus scale * (tick - segment start). Matching this bit for bit matters: times such as
    0.125 s sit exactly on a rounding edge of the 10 ms grid.
    """
    res = score.ticks_per_quarter
    scales = [(0, 60.0 / (120.0 * res))]
    tempos = score.tempos.numpy()
    for tick, mspq in zip(tempos["time"].tolist(), tempos["mspq"].tolist(), strict=True):
        scale = 60.0 / ((6e7 / mspq) * res)
        if tick == 0:
            scales = [(0, scale)]
        elif scale != scales[-1][1]:
            scales.append((tick, scale))
    seg_tick = np.array([t for t, _ in scales], dtype=np.int64)
    seg_scale = np.array([s for _, s in scales])
    seg_time = np.zeros(len(scales))
    for i in range(1, len(scales)):
        seg_time[i] = seg_time[i - 1] + seg_scale[i - 1] * (seg_tick[i] - seg_tick[i - 1])
    if len(scales) == 1:
        return seg_scale[0] * ticks        # == 0.0 + scale * (ticks - 0), bit for bit
    seg = np.searchsorted(seg_tick, ticks, side="right") - 1
    return seg_time[seg] + seg_scale[seg] * (ticks - seg_tick[seg])


def _notes_from_symusic(score) -> _Notes | None:
    """Notes as pretty_midi would list them, or None when symusic's note pairing may differ.

    symusic pairs each note-off with the oldest open note of its pitch; pretty_midi closes every open
    note of that pitch begun before the note-off's tick. The two agree unless notes of one pitch and
    channel overlap (a note-on while the pitch sounds), where symusic can even lose a note; so when
    its output shows such an overlap, the caller parses the file with pretty_midi instead (exact,
    ~100x slower; none of the MAESTRO files needs it).
    """
    pitch, start, end, vel, inst, cct, ccv, cci = [], [], [], [], [], [], [], []
    for k, track in enumerate(score.tracks):
        n = track.notes.numpy()
        if not n["duration"].all():
            # a note-off on its note-on's tick with no older note open: pretty_midi drops that note
            n = {key: a[n["duration"] > 0] for key, a in n.items()}
        if len(n["time"]) == 0:
            continue   # pretty_midi makes no instrument without a note, so note_seq sees no pedal there
        t0 = n["time"].astype(np.int64)
        t1 = t0 + n["duration"]
        p = n["pitch"].astype(np.int64)
        if not track.is_drum and _same_pitch_overlap(t0, t1, p):
            return None
        c = track.controls.numpy()
        sel = c["number"] == _SUSTAIN_CC
        cct.append(c["time"][sel])
        ccv.append(c["value"][sel])
        cci.append(np.full(int(sel.sum()), k, dtype=np.int64))
        if track.is_drum:
            continue
        # pretty_midi lists an instrument's notes as their note-offs come (by end tick; at one tick
        # in file order, which for files pretty_midi wrote is by pitch); ties in note_seq's and
        # perceiver-io's stable sorts keep that order, so rebuild it (symusic lists by start).
        by_start = np.argsort(t0, kind="stable")
        order = by_start[np.argsort((t1[by_start] << 7) | p[by_start], kind="stable")]
        pitch.append(p[order])
        start.append(t0[order])
        end.append(t1[order])
        vel.append(n["velocity"][order])
        inst.append(np.full(len(order), k, dtype=np.int64))
    cat = _concat_int
    n_notes = sum(len(a) for a in start)
    seconds = _tick_to_seconds(score, np.concatenate([cat(start), cat(end), cat(cct)]))
    return _Notes(cat(pitch), seconds[:n_notes], seconds[n_notes:2 * n_notes], cat(vel), cat(inst),
                  seconds[2 * n_notes:], cat(ccv), cat(cci))


def _same_pitch_overlap(start: np.ndarray, end: np.ndarray, pitch: np.ndarray) -> bool:
    # by pitch, then start: symusic lists notes by start, so a radix sort on the small pitch suffices
    by_start = np.argsort(start, kind="stable")
    order = by_start[np.argsort(pitch[by_start].astype(np.int16), kind="stable")]
    p, s, e = pitch[order], start[order], end[order]
    return bool(((p[1:] == p[:-1]) & (e[:-1] > s[1:])).any())


def _concat_int(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


# ---- sustain: note_seq's apply_sustain_control_changes, vectorised ----
def _pedal_changes(t: np.ndarray, down: np.ndarray) -> np.ndarray:
    """Times at which the pedal state changes, starting with a press (so presses are the even ones).

    note_seq sorts pedal events by (time, kind) with presses before releases, so the state after
    all events at one time is "up" if any of them is a release. Events that leave the state as it
    was change nothing in note_seq's walk, so only changes are kept (MAESTRO has ~20 CC64 per press).
    """
    if len(t) > 1 and (t[1:] < t[:-1]).any():
        order = np.argsort(t, kind="stable")
        t, down = t[order], down[order]
    first = np.flatnonzero(np.concatenate([[True], t[1:] != t[:-1]]))
    state = ~np.logical_or.reduceat(~down, first)
    changed = state != np.concatenate([[False], state[:-1]])
    return t[first][changed]


def _apply_sustain(n: _Notes) -> tuple[np.ndarray, np.ndarray]:
    """New note ends and a keep mask, exactly as `sequences_lib.apply_sustain_control_changes`.

    note_seq walks events sorted by (time, kind) with kinds press < release < note-on < note-off.
    Per instrument, that amounts to:
    - a note whose note-off comes with the pedal down lasts until the next release after it (or the
      last event of the piece when none follows);
    - a note-on with the pedal down ends every still-sounding note of that pitch at that moment
      (held or sustained); a note ended at its own start is deleted;
    so end' = min(first later same-pitch onset made with the pedal down, release).
    """
    n_notes = len(n.pitch)
    if n_notes == 0 or len(n.cc_time) == 0:
        return n.end, np.ones(n_notes, dtype=bool)
    last_time = max(n.start.max(), n.end.max(), n.cc_time.max())
    down_at_start = np.zeros(n_notes, dtype=bool)
    release = n.end.copy()
    instruments = np.flatnonzero(np.bincount(n.instrument))   # np.unique is 10x slower here
    for k in instruments:
        cc_k = n.cc_instrument == k
        if not cc_k.any():
            continue
        changes = _pedal_changes(n.cc_time[cc_k], n.cc_value[cc_k] >= 64)
        if len(changes) == 0:
            continue                                  # only releases: the pedal is never down
        notes_k = n.instrument == k if len(instruments) > 1 else slice(None)
        s, e = n.start[notes_k], n.end[notes_k]
        # index of the last change at or before a time: even -> pedal down (state after that time)
        i_s = np.searchsorted(changes, s, side="right") - 1
        i_e = np.searchsorted(changes, e, side="right") - 1
        down_at_start[notes_k] = (i_s >= 0) & (i_s % 2 == 0)
        down_at_end = (i_e >= 0) & (i_e % 2 == 0)
        nxt = np.minimum(i_e + 1, len(changes) - 1)
        next_release = np.where(i_e + 1 < len(changes), changes[nxt], last_time)
        release[notes_k] = np.where(down_at_end, next_release, e)
    if not down_at_start.any():
        return release, np.ones(n_notes, dtype=bool)
    # First later onset of the same instrument and pitch made with the pedal down; note_seq handles
    # onsets at one time in sequence order, hence stable sorts (by start, then by instrument/pitch).
    by_start = np.argsort(n.start, kind="stable")
    group = n.instrument * 128 + n.pitch
    small = group.astype(np.int16) if group.max() < 2**15 else group   # radix sort when it fits
    order = by_start[np.argsort(small[by_start], kind="stable")]
    cand = np.where(down_at_start[order], np.arange(n_notes), n_notes)
    nxt = np.minimum.accumulate(cand[::-1])[::-1]                  # first candidate at or after position
    nxt = np.append(nxt[1:], n_notes)                               # ... strictly after
    nxt_c = np.minimum(nxt, n_notes - 1)
    same = (nxt < n_notes) & (group[order][nxt_c] == group[order])
    cut = np.empty(n_notes)
    cut[order] = np.where(same, n.start[order][nxt_c], np.inf)
    new_end = np.minimum(cut, release)
    keep = ~((cut <= release) & (cut == n.start))
    return new_end, keep


# ---- the core ----
def encode_notes(pitch, start, end, velocity, flavour: str = "magenta") -> np.ndarray:
    """Event ids of notes given as arrays (seconds, sustain already folded in), in the notes' order.

    Ties (same onset and pitch) keep the given order, as note_seq's stable sort does.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown codec flavour {flavour!r}; choose one of: {', '.join(FLAVOURS)}")
    pitch = np.asarray(pitch, dtype=np.int64)
    start = np.asarray(start, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    velocity = np.clip(np.asarray(velocity, dtype=np.int64), 1, 127)
    if not (len(pitch) == len(start) == len(end) == len(velocity)):
        raise ValueError("encode_notes: pitch, start, end and velocity must have the same length")
    if len(pitch) and (pitch.min() < 0 or pitch.max() > 127):
        raise ValueError("encode_notes: pitches must be in 0..127")
    if len(start) and min(start.min(), end.min()) < 0:
        raise MidiError("a note has a negative time", kind="bad-timing")
    if len(pitch) == 0:
        return np.zeros(0, dtype=np.int32)
    if flavour == "magenta":
        return _encode_magenta(pitch, start, end, velocity)
    return _encode_perceiver_io(pitch, start, end, velocity)


def _quantize(seconds: np.ndarray) -> np.ndarray:
    # note_seq quantize_to_step: int(seconds * steps_per_second + (1 - 0.5)); times are >= 0.
    return np.floor(seconds * STEPS_PER_SECOND + 0.5).astype(np.int64)


def _assemble(note_ids: np.ndarray, full_shifts: np.ndarray, last_shift: np.ndarray,
              vel_events: np.ndarray, vel_ids: np.ndarray) -> np.ndarray:
    """Lay out per event: `full_shifts` x TIME_SHIFT(100), a last shift id (when > 0), a velocity id
    (for the events listed in vel_events), then the note id. The slots left unset are exactly the
    full shifts, so the output starts filled with those."""
    has_vel = np.zeros(len(note_ids), dtype=np.int32)
    has_vel[vel_events] = 1
    has_last = last_shift > 0
    note_pos = np.cumsum(full_shifts + has_last + has_vel) + np.arange(len(note_ids))
    out = np.full(int(note_pos[-1]) + 1 if len(note_pos) else 0, SHIFT_1S, dtype=np.int32)
    out[note_pos] = note_ids
    out[note_pos[vel_events] - 1] = vel_ids
    shifted = np.flatnonzero(has_last)
    out[note_pos[shifted] - 1 - has_vel[shifted]] = last_shift[shifted]
    return out


def _by_start_then_pitch(start: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """Stable order by (start, pitch); two stable argsorts are ~10x faster than lexsort here."""
    by_start = np.argsort(start, kind="stable")
    s = start[by_start]
    rank = np.cumsum(np.concatenate([[0], s[1:] != s[:-1]]))
    return by_start[np.argsort(rank * 128 + pitch[by_start], kind="stable")]


def _encode_magenta(pitch, start, end, velocity) -> np.ndarray:
    q_start, q_end = _quantize(start), _quantize(end)
    q_end = np.where(q_end == q_start, q_end + 1, q_end)        # note_seq: no zero-length notes
    order = _by_start_then_pitch(start, pitch)                   # Performance: sorted(key=(start, pitch))
    pitch, q_start, q_end, velocity = pitch[order], q_start[order], q_end[order], velocity[order]
    n = len(pitch)
    # events sorted by (step, note index, is_off), as note_seq's sorted(onsets + offsets): one integer
    # key; onsets come already sorted, so the stable sort (timsort) mostly merges two runs.
    two_idx = 2 * np.arange(n)
    steps = np.concatenate([q_start, q_end])
    ev = np.argsort(steps * (2 * n) + np.concatenate([two_idx, two_idx + 1]), kind="stable")
    off = ev >= n
    idx = ev - n * off
    step = steps[ev].astype(np.int32)
    note_ids = (pitch.astype(np.int32) + NOTE_ON)[idx] + NOTE_OFF * off
    # Note-ons appear in event order in note order (their keys rise with the index), so the velocity
    # event test runs over notes: a bin differing from the previous note-on's (initially none).
    vbin = ((velocity - 1) // VELOCITY_BIN_SIZE + 1).astype(np.int32)
    change = np.flatnonzero(vbin != np.concatenate([[0], vbin[:-1]]))
    position = np.empty(2 * n, dtype=np.int64)
    position[ev] = np.arange(2 * n)                 # event position of each (note, on/off)
    # time shifts: note_seq emits 100-step shifts while the gap exceeds 100, then the rest
    gap = np.diff(step, prepend=np.int32(0))
    return _assemble(note_ids, *_split_gaps(gap), position[change], VELOCITY - 1 + vbin[change])


def _split_gaps(gap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Steps -> (number of full 1 s shifts, id of the last shift or 0), as note_seq chains them:
    100-step shifts while more than 100 steps remain, then the rest (a 200-step gap is 100, 100)."""
    full = np.zeros(len(gap), dtype=np.int32)
    long = gap > MAX_SHIFT_STEPS
    full[long] = (gap[long] - 1) // MAX_SHIFT_STEPS
    last = np.where(gap > 0, TIME_SHIFT - 1 + gap - full * MAX_SHIFT_STEPS, 0).astype(np.int32)
    return full, last


def _encode_perceiver_io(pitch, start, end, velocity) -> np.ndarray:
    # krasserm/perceiver-io midi_processor.encode_midi: notes stably sorted by start, split into
    # [on, off] pairs, stably sorted by exact time; each gap rounded on its own (drift accumulates).
    order = np.argsort(start, kind="stable")
    pitch, start, end, velocity = pitch[order], start[order], end[order], velocity[order]
    n = len(pitch)
    times = np.stack([start, end], axis=1).reshape(-1)
    is_off = np.tile([False, True], n)
    ev = np.argsort(times, kind="stable")
    times, is_off, note = times[ev], is_off[ev], ev // 2
    note_ids = np.where(is_off, NOTE_OFF, NOTE_ON) + pitch[note]
    interval = np.rint((times - np.concatenate([[0.0], times[:-1]])) * STEPS_PER_SECOND).astype(np.int64)
    full = interval // MAX_SHIFT_STEPS
    rest = interval - full * MAX_SHIFT_STEPS
    last = np.where(rest > 0, TIME_SHIFT - 1 + rest, 0)
    # It compares the previous event's raw velocity (None after a note-off, 0 at first) with this
    # note's bin v // 4, so a velocity event comes before nearly every note-on.
    raw = velocity[note]
    vbin = raw // VELOCITY_BIN_SIZE
    prev_raw = np.concatenate([[0], raw[:-1]])
    prev_off = np.concatenate([[False], is_off[:-1]])
    vel_events = np.flatnonzero(~is_off & (prev_off | (prev_raw != vbin)))
    return _assemble(note_ids, full, last, vel_events, VELOCITY + vbin[vel_events])


def _encode_parsed(notes: _Notes, flavour: str) -> tuple[np.ndarray, int]:
    new_end, keep = _apply_sustain(notes)
    ids = encode_notes(notes.pitch[keep], notes.start[keep], new_end[keep], notes.velocity[keep], flavour)
    return ids, int(keep.sum())


def encode(midi: pretty_midi.PrettyMIDI | str | Path, flavour: str = "magenta") -> np.ndarray:
    """Event ids (int32) of a piece: every non-drum instrument merged, sustain pedal folded in."""
    if isinstance(midi, (str, Path)):
        return encode_path(midi, flavour).ids
    return _encode_parsed(_notes_from_pretty_midi(midi), flavour)[0]


def _read_bytes(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The file's bytes, refusing what is not a plain file or is larger than `max_bytes`.

    Reads at most max_bytes + 1 bytes, so a device or a file that grows while read cannot exhaust memory.
    """
    path = Path(path)
    try:
        if not path.is_file():
            why = "no such file" if not path.exists() else "not a regular file"
            raise MidiError(f"cannot read ({why})", path, "unreadable")
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise MidiError(f"cannot read ({e.strerror or e})", path, "unreadable") from None
    if len(data) > max_bytes:
        raise MidiError(f"too large: over {max_bytes >> 20} MiB (MAX_FILE_BYTES)", path, "too-large")
    if not data:
        raise MidiError("empty file", path, "empty")
    return data


def _check_header(data: bytes, path: str | Path) -> None:
    """Refuse what symusic or pretty_midi would misread or divide by: the MThd chunk's fields."""
    if data[:4] != b"MThd":
        raise MidiError("not a MIDI file (no MThd header)", path, "not-midi")
    if len(data) < 14:
        raise MidiError(f"truncated MIDI file (header of {len(data)} bytes, 14 needed)", path, "truncated")
    length = int.from_bytes(data[4:8], "big")
    fmt, tracks, division = (int.from_bytes(data[i:i + 2], "big") for i in (8, 10, 12))
    if length < 6 or length > len(data) - 8:
        raise MidiError(f"bad header chunk length {length} (6 expected)", path, "bad-header")
    if fmt > 2:
        raise MidiError(f"bad MIDI format {fmt} (0, 1 or 2 allowed)", path, "bad-header")
    if division & 0x8000:
        raise MidiError("SMPTE time division (frames per second) is not supported; "
                        "only ticks per quarter note", path, "bad-division")
    if division == 0:
        raise MidiError("time division of 0 ticks per quarter note", path, "bad-division")
    if tracks == 0:
        raise MidiError("no tracks (the header says 0)", path, "no-notes")


def _parse_score(data: bytes, path: str | Path, max_events: int = MAX_EVENTS):
    """symusic's Score of checked bytes; every parser failure and every value the codec cannot time
    (tempo 0, too many events) becomes MidiError."""
    import symusic  # imported lazily: only the fast path needs it

    try:
        score = symusic.Score.from_midi(data)
    except Exception as e:  # symusic raises RuntimeError (and others) with a parser message
        msg = str(e).replace("MiniMidi: ", "").replace(": iostream error", "").strip()
        if "chunk length" in msg or "less than 14" in msg or "Unexpected EOF" in msg:
            raise MidiError(f"truncated MIDI file or a chunk length past its end ({msg})", path,
                            "truncated") from None
        if msg.startswith("Get ") and "=" in msg:   # symusic's check of a data byte, e.g. "Get velocity=255"
            raise MidiError(f"corrupt MIDI file (a data byte over 127: {msg[4:]})", path) from None
        raise MidiError(f"corrupt MIDI file ({msg or type(e).__name__})", path) from None
    events = len(score.tempos) + sum(len(t.notes) + len(t.controls) + len(t.pitch_bends) for t in score.tracks)
    if events > max_events:
        raise MidiError(f"too many events: {events:,} > {max_events:,} (MAX_EVENTS)", path, "too-many-events")
    if score.ticks_per_quarter <= 0:  # the header check refuses these; kept as the divisor's own guard
        raise MidiError(f"time division of {score.ticks_per_quarter} ticks per quarter note", path, "bad-division")
    tempos = score.tempos.numpy()
    zero = np.flatnonzero(tempos["mspq"] <= 0)
    if len(zero):
        raise MidiError(f"tempo of {int(tempos['mspq'][zero[0]])} microseconds per quarter note "
                        f"at tick {int(tempos['time'][zero[0]])}", path, "bad-tempo")
    return score


def _load_score(path: str | Path):
    """(symusic Score, file bytes), or MidiError with the reason."""
    data = _read_bytes(path)
    _check_header(data, path)
    return _parse_score(data, path), data


def _pretty_midi_of(data: bytes, path: str | Path) -> pretty_midi.PrettyMIDI:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pretty_midi.PrettyMIDI(io.BytesIO(data))
    except Exception as e:  # mido/pretty_midi raise many kinds on malformed files
        detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise MidiError(f"corrupt MIDI file ({detail})", path) from None


def read_midi(path: str | Path) -> pretty_midi.PrettyMIDI:
    """A MIDI file as PrettyMIDI for commands that need one (live --input-file, render), with the
    checks and bounds of `encode_path`; a bad file raises MidiError (one line naming the file)."""
    score, data = _load_score(path)
    notes = sum(len(t.notes) for t in score.tracks)
    if notes > MAX_PRETTY_MIDI_NOTES:
        raise MidiError(f"too many notes for this command: {notes:,} > {MAX_PRETTY_MIDI_NOTES:,}",
                        path, "too-many-events")
    return _pretty_midi_of(data, path)


def encode_path(path: str | Path, flavour: str = "magenta",
                max_piece_seconds: float = CodecConfig.max_piece_seconds) -> EncodedPiece:
    """Encode a MIDI file (the fast path of preprocess). Broken input raises MidiError(reason).

    Gives the ids `encode(PrettyMIDI(path))` gives (checked against note_seq on MAESTRO). Known
    exceptions: (1) a note-on arriving while its pitch already sounds on that channel, and never
    followed by a note-off of its own: pretty_midi closes it with the earlier note's note-off,
    symusic drops it without a trace (files showing such overlaps are parsed with pretty_midi, but
    this case shows none); (2) perceiver-io flavour only: notes starting at one instant keep the
    order of their note-offs, and among note-offs on one tick symusic loses the file's order, so we
    take pitch order (as in files pretty_midi writes); chord notes may come permuted otherwise.
    """
    score, data = _load_score(path)
    notes = _notes_from_symusic(score)
    if notes is None:   # overlapping notes of one pitch: pretty_midi's pairing is the reference
        count = sum(len(t.notes) for t in score.tracks)
        if count > MAX_PRETTY_MIDI_NOTES:
            raise MidiError(f"too many notes with overlaps of one pitch to pair exactly: {count:,} > "
                            f"{MAX_PRETTY_MIDI_NOTES:,} (MAX_PRETTY_MIDI_NOTES)", path, "too-many-events")
        notes = _notes_from_pretty_midi(_pretty_midi_of(data, path))
    if len(notes.pitch) == 0:
        raise MidiError("no notes (drum tracks are not used)", path, "no-notes")
    if min(notes.start.min(), notes.cc_time.min(initial=0.0)) < 0:
        raise MidiError("an event time overflows (delta times sum past 2**31 ticks)", path, "bad-timing")
    # the pedal can hold notes until the last pedal event, so that bounds the piece too (and the ids)
    seconds = float(max(notes.end.max(), notes.cc_time.max(initial=0.0)))
    if not seconds <= max_piece_seconds:
        raise MidiError(f"absurd length: {seconds:.0f} s > max_piece_seconds {max_piece_seconds:.0f}",
                        path, "too-long")
    ids, count = _encode_parsed(notes, flavour)
    seconds = total_steps(ids) / STEPS_PER_SECOND
    if seconds > max_piece_seconds:     # kept as a guard: sustain folding never ends a note later
        raise MidiError(f"absurd length: {seconds:.0f} s > max_piece_seconds {max_piece_seconds:.0f}",
                        path, "too-long")
    return EncodedPiece(ids=ids, notes=count, seconds=seconds)


# ---- decoding ----
def velocity_of_bin(b: int, flavour: str = "magenta") -> int:
    """MIDI velocity a velocity event stands for (magenta: bin 1..32; perceiver-io: bin 0..31)."""
    if flavour == "perceiver-io":
        return max(1, b * VELOCITY_BIN_SIZE)   # krasserm decodes bin*4; a bin-0 note stays audible here
    return 1 + (b - 1) * VELOCITY_BIN_SIZE


def decode(ids, flavour: str = "magenta", max_note_seconds: float = 5.0) -> pretty_midi.PrettyMIDI:
    """A one-piano PrettyMIDI from event ids; never fails.

    Note-offs close the oldest open note of their pitch (as note_seq); stray note-offs, zero-length
    notes and ids outside 0..387 (PAD included) are ignored; a note still open max_note_seconds after
    its onset is closed there (Magenta's generator uses 5 s), as are notes open at the end.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown codec flavour {flavour!r}; choose one of: {', '.join(FLAVOURS)}")
    if not max_note_seconds > 0:
        raise ValueError(f"decode: max_note_seconds must be > 0, got {max_note_seconds}")
    first_bin = 0 if flavour == "perceiver-io" else 1
    max_steps = max_note_seconds * STEPS_PER_SECOND
    step, velocity = 0, DEFAULT_VELOCITY
    open_notes: dict[int, collections.deque] = collections.defaultdict(collections.deque)
    notes: list[tuple[int, float, int, int]] = []   # (start step, end step, pitch, velocity)

    def close_expired(queue: collections.deque, pitch: int, now: int) -> None:
        while queue and now - queue[0][0] > max_steps:
            s, v = queue.popleft()
            notes.append((s, s + max_steps, pitch, v))

    for i in np.asarray(ids).reshape(-1).astype(np.int64, copy=False).tolist():
        if NOTE_ON <= i < NOTE_OFF:
            open_notes[i].append((step, velocity))
        elif NOTE_OFF <= i < TIME_SHIFT:
            pitch = i - NOTE_OFF
            queue = open_notes[pitch]
            close_expired(queue, pitch, step)
            if queue:
                s, v = queue.popleft()
                if step > s:
                    notes.append((s, step, pitch, v))
        elif TIME_SHIFT <= i < VELOCITY:
            step += i - TIME_SHIFT + 1
        elif VELOCITY <= i < VOCAB_SIZE:
            velocity = velocity_of_bin(i - VELOCITY + first_bin, flavour)
    for pitch, queue in open_notes.items():
        close_expired(queue, pitch, step)
        notes.extend((s, step, pitch, v) for s, v in queue if step > s)

    # 500 ticks per beat at 120 bpm: 1 ms per tick, so the 10 ms grid survives writing a file.
    pm = pretty_midi.PrettyMIDI(resolution=500, initial_tempo=120.0)
    piano = pretty_midi.Instrument(program=0, is_drum=False, name="piano")
    for s, e, pitch, v in sorted(notes, key=lambda n: (n[0], n[2])):
        piano.notes.append(pretty_midi.Note(velocity=v, pitch=pitch, start=s / STEPS_PER_SECOND,
                                            end=e / STEPS_PER_SECOND))
    pm.instruments.append(piano)
    return pm
