"""What is sounding, row by row, while a model plays; and the events that state allows next.

A model sampled freely writes events the decoder throws away or cuts: note-offs of pitches that are
not sounding, note-offs in the step of their own note-on (zero-length notes), note-ons of pitches
already sounding, and notes left open until codec.decode closes them at its cap. `PerformanceState`
tracks, per row of a batch, which pitches sound and since which 10 ms step, and masks (-inf) before
each draw every event that would be lost or that breaks the musician's rules (amadeus.playing_rules):

- a note-off of a pitch that is not sounding, or of one struck in the current step;
- a note-on of a pitch that is sounding. The codec re-strikes a sounding pitch as note-off then
  note-on in the same step (codec.encode writes real MIDI so, after sustain folding), so that is the
  one way to repeat a held pitch here too: the note-off is allowed, then the note-on;
- a time shift that would carry a sounding note past the length cap (the decoder's max_note_seconds,
  or the rules' if shorter). Shorter shifts stay allowed; when a note is at the cap, only note-offs
  of the notes at the cap are, so the sampler releases them itself, the note-off enters the model's
  context, and the decoder's cap never fires;
- note-ons outside the register or (locked) key, beyond max_polyphony, or while the current
  velocity is outside the allowed range; velocity events outside it; and, while nothing sounds,
  time shifts that would make the rest longer than max_silence.

Some event is always allowed (tests/test_performance_state.py checks it under random rules): a note
at the cap can be released; otherwise a one-step shift is allowed unless a rest is at max_silence,
and then nothing sounds, so a note-on is allowed (the rules always leave a pitch) or, when the
velocity is out of range, a velocity event in it.

A prompt (or a player's events, `feed`) is replayed as codec.decode reads it: a note-off closes the
oldest open note of its pitch, a note is over once it is older than the decoder's cap. The masks
never let a model open a second note of a sounding pitch, but a prompt may hold one (old, unmasked
model output does): then its notes wait in a queue, and each needs its own note-off, oldest first.

    state = PerformanceState(prompt_ids, rules)      # [B, T] prompt, replayed
    for _ in range(n):
        token = sample(state.mask(logits))           # logits [B, 388]
        state.update(token)                          # cheap: a few tensor ops per step
        logits = model.step(token)

Masked logits are -inf; a numeric key_strength subtracts that many nats from out-of-key note-ons.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from amadeus.codec import DEFAULT_VELOCITY
from amadeus.errors import UserError
from amadeus.keys import Key, estimate_key
from amadeus.playing_rules import AUTO_KEY, DEFAULT_RULES, LOCK, PlayingRules, note_name
from amadeus.release_prior import ReleasePrior
from amadeus.vocab import (
    MAX_SHIFT_STEPS,
    NOTE_OFF,
    NOTE_ON,
    NUM_PITCHES,
    PAD_ID,
    STEPS_PER_SECOND,
    TIME_SHIFT,
    VELOCITY,
    VOCAB_SIZE,
)

SILENT = -(1 << 40)  # the age of a pitch that is not sounding: no note is that old (348 years)
_SCRATCH = NUM_PITCHES  # age column that events other than notes write to (it stays silent)


def cap_steps(seconds: float) -> int:
    """Longest note, in steps, that codec.decode keeps whole: it closes a note once now - onset > cap."""
    return int(np.floor(seconds * STEPS_PER_SECOND + 1e-9))


@dataclass
class _Replay:
    """One row's notes as codec.decode reads events, kept in Python (prompts are replayed once)."""

    cap: int                                  # the decoder's cap, in steps
    now: int = 0
    velocity_id: int | None = None            # the last velocity event
    last_end: int = 0                         # when the last note ended (the start of a rest)
    open: dict[int, collections.deque] = field(default_factory=lambda: collections.defaultdict(collections.deque))
    notes: list[tuple[int, int, int]] = field(default_factory=list)   # closed (start, end, pitch)

    def _expire(self, pitch: int) -> None:
        onsets = self.open[pitch]
        while onsets and self.now - onsets[0] > self.cap:
            start = onsets.popleft()
            self.notes.append((start, start + self.cap, pitch))
            self.last_end = max(self.last_end, start + self.cap)

    def feed(self, ids: Sequence[int]) -> None:
        for i in ids:
            if NOTE_ON <= i < NOTE_OFF:
                self._expire(i)
                self.open[i].append(self.now)
            elif NOTE_OFF <= i < TIME_SHIFT:
                pitch = i - NOTE_OFF
                self._expire(pitch)
                if self.open[pitch]:
                    start = self.open[pitch].popleft()
                    if self.now > start:  # decode drops a zero-length note
                        self.notes.append((start, self.now, pitch))
                        self.last_end = max(self.last_end, self.now)
            elif TIME_SHIFT <= i < VELOCITY:
                self.now += i - TIME_SHIFT + 1
            elif VELOCITY <= i < VOCAB_SIZE:
                self.velocity_id = i
        for pitch in list(self.open):
            self._expire(pitch)

    def ages(self, depth: int) -> np.ndarray:
        """[128, depth]: steps each pitch's open notes have sounded, oldest first; SILENT where none."""
        out = np.full((NUM_PITCHES, depth), SILENT, dtype=np.int64)
        for pitch, onsets in self.open.items():
            out[pitch, :len(onsets)] = [self.now - onset for onset in onsets]
        return out

    def note_array(self) -> np.ndarray:
        """[N, 3] (start, end, pitch) in steps; open notes end now."""
        held = [(s, self.now, p) for p, onsets in self.open.items() for s in onsets]
        return np.array(self.notes + held, dtype=np.float64).reshape(-1, 3)


def prompt_key(prompt_ids, rules: PlayingRules, decoder_max_note_seconds: float = 5.0) -> Key | None:
    """The key `rules` impose on a continuation of one prompt: the named one, the prompt's
    Krumhansl-Schmuckler estimate for "auto" (amadeus.keys; notes weighted by their duration), or
    None (no key rule, or a prompt with no notes)."""
    if rules.key != AUTO_KEY:
        return rules.fixed_key
    replay = _Replay(cap_steps(decoder_max_note_seconds))
    replay.feed(np.asarray(prompt_ids, dtype=np.int64).reshape(-1).tolist())
    return _estimated_key(replay)


def _estimated_key(replay: _Replay) -> Key | None:
    notes = replay.note_array()
    return estimate_key(notes).key if (notes[:, 1] > notes[:, 0]).any() else None


def _rows(prompt, rows: int) -> list[list[int]]:
    if prompt is None:
        return [[] for _ in range(rows)]
    if isinstance(prompt, torch.Tensor):
        prompt = prompt.detach().cpu().numpy()
    if isinstance(prompt, np.ndarray):
        return [list(map(int, r)) for r in (prompt.reshape(1, -1) if prompt.ndim == 1 else prompt)]
    prompt = list(prompt)
    if not prompt:
        return [[] for _ in range(rows)]
    if not isinstance(prompt[0], (Sequence, np.ndarray, torch.Tensor)):
        return [list(map(int, prompt))]
    return [list(map(int, np.asarray(r).reshape(-1))) for r in prompt]


class PerformanceState:
    """Per-row note state in torch tensors, and the event masks it implies (module docstring).

    `prompt`: [B, T] ids (tensor, array or rows of ids; None = `rows` empty rows), replayed as the
    decoder reads them. `flavour` and `decoder_max_note_seconds` say how the ids will be decoded
    (codec flavour for velocity bins; codec max_note_seconds). Attributes: `keys` (the key each row
    plays in, None where no key applies), `notes` (lines worth telling the user, e.g. no key found).
    `release_prior` (the checkpoint's amadeus.release_prior.ReleasePrior) adds its bias, by note age,
    to the note-offs of sounding pitches, so the model releases notes as often as pianists do.
    """

    def __init__(self, prompt=None, rules: PlayingRules = DEFAULT_RULES, *, rows: int = 1, flavour: str = "magenta",
                 decoder_max_note_seconds: float = 5.0, device: torch.device | str | None = None,
                 release_prior: ReleasePrior | None = None):
        if not isinstance(rules, PlayingRules):
            raise UserError(f"rules: expected PlayingRules, got {type(rules).__name__}")
        self.rules = rules
        self.device = torch.device(device or "cpu")
        self.decoder_cap = cap_steps(decoder_max_note_seconds)
        if self.decoder_cap < 1:
            raise UserError(f"decoder max_note_seconds {decoder_max_note_seconds}: must be >= 0.01")
        caps = [decoder_max_note_seconds] + ([rules.max_note_seconds] if rules.max_note_seconds else [])
        self.cap = cap_steps(min(caps))
        self.silence_cap = None if rules.max_silence is None else cap_steps(rules.max_silence)
        self.release_bias = None if release_prior is None else release_prior.bias_table(self.cap, self.device)
        prompts = _rows(prompt, rows)
        self.rows = len(prompts)
        replays = [_Replay(self.decoder_cap) for _ in prompts]
        for replay, ids in zip(replays, prompts, strict=True):
            replay.feed(ids)
        self.notes: list[str] = []
        self._keys = [self._key_of(replay) for replay in replays]   # per prompt row
        self._prompt_row = torch.arange(self.rows, device=self.device)  # each row's prompt row (beams move)
        self._tables(flavour)
        self._static_masks()
        dev = self.device
        # age [B, 129]: steps each pitch's note has sounded (0 = struck in this step), SILENT where none
        # sounds (silent entries drift up with time but stay hugely negative); column 128 is scratch.
        self.age = torch.full((self.rows, NUM_PITCHES + 1), SILENT, dtype=torch.long, device=dev)
        self._pitch_ages = self.age[:, :NUM_PITCHES]   # a view: update() writes age in place
        self._new_buffer()
        self.rest = torch.zeros((self.rows, 1), dtype=torch.long, device=dev) if rules.max_silence else None
        self.velocity_ok = (torch.ones((self.rows, 1), dtype=torch.bool, device=dev)
                            if rules.restricts_velocity else None)
        self._load(replays)

    # --- setup ------------------------------------------------------------------------------------

    def _key_of(self, replay: _Replay) -> Key | None:
        if self.rules.key != AUTO_KEY:
            return self.rules.fixed_key
        key = _estimated_key(replay)
        if key is None:
            self.notes.append("key auto: the prompt has no notes to estimate a key from; no key applied")
        return key

    def _tables(self, flavour: str) -> None:
        """What each event id does (PAD included, as a no-op), looked up by `update`: the age column
        it writes, the age it writes there (0 for a note-on, SILENT for a note-off) and the steps it
        advances time; whether it is a note-off; (velocity rules) whether its velocity is allowed.
        Tables are [V, 1] (or [V, 3, 1]), so that looking up [B] tokens gives [B, 1] columns."""
        ids = torch.arange(PAD_ID + 1)
        note = ids < TIME_SHIFT
        dev = self.device
        shift = (ids >= TIME_SHIFT) & (ids < VELOCITY)
        column = torch.where(note, ids % NOTE_OFF, _SCRATCH)
        self.effect = torch.stack([column, torch.where(ids < NOTE_OFF, 0, SILENT),
                                   torch.where(shift, ids - TIME_SHIFT + 1, 0)], dim=1).to(dev)[:, :, None]
        self.is_off = (note & (ids >= NOTE_OFF)).to(dev)[:, None]
        self.shift_steps = torch.arange(1, MAX_SHIFT_STEPS + 1, device=dev)[None, :]
        bins = torch.as_tensor(self.rules.velocity_bins(flavour))
        self.velocity_bins = bins.to(dev)[None, :]
        code = torch.full((PAD_ID + 1,), -1, dtype=torch.int8)   # -1: not a velocity event
        code[VELOCITY:VOCAB_SIZE] = bins.to(torch.int8)
        self.velocity_code = code.to(dev)[:, None]
        self._cap = torch.tensor(self.cap, device=dev)
        self._cap_minus_one = torch.tensor(self.cap - 1, device=dev)
        self._zero = torch.tensor(0, device=dev)
        self._minus_inf = torch.tensor(float("-inf"), device=dev)

    def _static_masks(self) -> None:
        """Pitches each row may strike (register, locked key) and the key penalty, fixed for the run."""
        rules = self.rules
        allowed = np.stack([rules.pitch_allowed(key) for key in self._keys])
        empty = ~allowed.any(axis=1)
        if empty.any():
            key = self._keys[int(np.argmax(empty))]
            raise UserError(f"key {key}: no note from {note_name(rules.lowest or 0)} to "
                            f"{note_name(127 if rules.highest is None else rules.highest)} is in it")
        self.pitch_ok = None if allowed.all() else torch.as_tensor(allowed, device=self.device)
        self.penalty = None
        if rules.key_strength != LOCK and rules.key_strength > 0 and any(k is not None for k in self._keys):
            penalty = np.zeros((self.rows, VOCAB_SIZE), dtype=np.float32)
            for row, key in enumerate(self._keys):
                if key is not None:
                    out_of_key = ~key.pitch_class_mask()[np.arange(NUM_PITCHES) % 12]
                    penalty[row, NOTE_ON:NOTE_OFF][out_of_key] = -rules.key_strength
            self.penalty = torch.as_tensor(penalty, device=self.device)

    def _load(self, replays: list[_Replay]) -> None:
        """Set the tensors of each row from its replay."""
        depth = max([1] + [len(onsets) for r in replays for onsets in r.open.values()])
        ages = torch.as_tensor(np.stack([r.ages(depth) for r in replays]), device=self.device)
        self._pitch_ages.copy_(ages[:, :, 0])
        self.later = None
        if depth > 1:  # a pitch held twice: its later notes wait in a queue (column 128: scratch)
            self.later = torch.full((self.rows, NUM_PITCHES + 1, depth - 1), SILENT, dtype=torch.long,
                                    device=self.device)
            self.later[:, :NUM_PITCHES] = ages[:, :, 1:]
        if self.rest is not None:
            self.rest[:, 0] = torch.as_tensor([r.now - r.last_end for r in replays])
        if self.velocity_ok is not None:
            for row, r in enumerate(replays):
                if r.velocity_id is None:
                    self.velocity_ok[row] = self.rules.velocity_allowed(DEFAULT_VELOCITY)
                else:
                    self.velocity_ok[row] = bool(self.velocity_code[r.velocity_id, 0] > 0)

    def _new_buffer(self) -> None:
        """The allowed-events buffer [B, 388] and its four parts (views), rewritten every step."""
        self._buffer = torch.zeros((self.age.shape[0], VOCAB_SIZE), dtype=torch.bool, device=self.device)
        self._parts = self._buffer.split([NOTE_OFF - NOTE_ON, TIME_SHIFT - NOTE_OFF, VELOCITY - TIME_SHIFT,
                                          VOCAB_SIZE - VELOCITY], dim=1)

    def feed(self, ids) -> None:
        """Replay events that did not come through `mask` (a player's, more prompt) as the decoder
        reads them, decoder cap included; `ids` [B, T] or rows of ids. Runs in Python: for phrases,
        not for every sampled step."""
        rows = _rows(ids, self.rows)
        if len(rows) != self.rows:
            raise ValueError(f"feed: {len(rows)} rows of ids for a state of {self.rows} rows")
        ages = self._pitch_ages[:, :, None]
        if self.later is not None:
            ages = torch.cat([ages, self.later[:, :NUM_PITCHES]], dim=2)
        ages = ages.cpu().numpy()
        rests = self.rest[:, 0].cpu().tolist() if self.rest is not None else [0] * self.rows
        replays = []
        for row, events in enumerate(rows):  # replayed from step 0 = now
            replay = _Replay(self.decoder_cap, last_end=-rests[row])
            for pitch, k in zip(*np.nonzero(ages[row] >= 0), strict=True):
                replay.open[int(pitch)].append(-int(ages[row, pitch, k]))
            replay.feed(events)
            replays.append(replay)
        before = self.velocity_ok.clone() if self.velocity_ok is not None else None
        self._load(replays)
        if before is not None:  # rows without a velocity event keep their velocity
            kept = torch.as_tensor([r.velocity_id is None for r in replays], device=self.device)[:, None]
            self.velocity_ok = torch.where(kept, before, self.velocity_ok)

    # --- per step ---------------------------------------------------------------------------------

    def allowed(self) -> torch.Tensor:
        """bool [B, 388]: the events each row may take next."""
        return self._allowed().clone()

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, 388] with the disallowed events at -inf (and the key penalty added)."""
        if logits.shape[-1] != VOCAB_SIZE:
            raise UserError(f"playing rules mask the {VOCAB_SIZE}-event vocabulary, but the model gives "
                            f"{logits.shape[-1]} logits; decode without rules (rules=None)")
        if self.penalty is not None:
            logits = logits + self.penalty
        if self.release_bias is not None:  # silent pitches' note-offs are masked below anyway
            bias = self.release_bias[self._pitch_ages.clamp(0, self.cap)]
            logits = torch.cat([logits[:, :NOTE_OFF], logits[:, NOTE_OFF:TIME_SHIFT] + bias,
                                logits[:, TIME_SHIFT:]], dim=1)
        return torch.where(self._allowed(), logits, self._minus_inf)

    def _allowed(self) -> torch.Tensor:
        """The masks, written into one reused buffer (this runs every step: few, small tensor ops)."""
        age = self._pitch_ages
        note_on, note_off, shift, velocity = self._parts
        oldest = age.amax(dim=1, keepdim=True)
        room = self._cap - oldest                     # steps before the oldest note reaches the cap
        free = room > 0
        # at the cap only the notes at the cap may end; otherwise any not struck in this step
        torch.gt(age, torch.where(free, self._zero, self._cap_minus_one), out=note_off)
        torch.lt(age, 0, out=note_on)
        note_on &= free
        if self.pitch_ok is not None:
            note_on &= self.pitch_ok
        if self.rules.max_polyphony is not None:
            note_on &= (age >= 0).sum(dim=1, keepdim=True) < self.rules.max_polyphony
        if self.velocity_ok is not None:
            note_on &= self.velocity_ok
        if self.rest is not None:  # a rest may last max_silence
            room = torch.where(oldest < 0, self.silence_cap - self.rest, room)
        torch.le(self.shift_steps, room, out=shift)
        torch.logical_and(free, self.velocity_bins, out=velocity)
        return self._buffer

    def update(self, tokens: torch.Tensor) -> None:
        """Take one event per row, tokens [B] (PAD = no event), one that `mask` allowed. (Events from
        elsewhere go through `feed`: here a note-on of a sounding pitch would restart its note, where
        the decoder opens a second one.)"""
        column, age, steps = self.effect[tokens].unbind(1)  # each [B, 1]
        if self.later is not None:  # a note-off uncovers the pitch's next note, if the prompt held one
            index = column[:, :, None].expand(-1, 1, self.later.shape[2])
            queued = self.later.gather(1, index)                                  # [B, 1, depth - 1]
            off = self.is_off[tokens]
            age = torch.where(off, queued[:, :, 0], age)
            moved = torch.cat([queued[:, :, 1:], torch.full_like(queued[:, :, :1], SILENT)], dim=2)
            self.later.scatter_(1, index, torch.where(off[:, :, None], moved, queued))
            self.later += steps[:, :, None]
        if self.rest is not None:
            self.rest = torch.where(self.is_off[tokens], 0, self.rest) + steps
        if self.velocity_ok is not None:
            code = self.velocity_code[tokens]
            self.velocity_ok = torch.where(code >= 0, code > 0, self.velocity_ok)
        self.age.scatter_(1, column, age)
        self.age += steps

    def reorder(self, index: torch.Tensor) -> None:
        """Rows in a new order (beam search; repeated rows for several sequences per prompt)."""
        index = index.to(self.device)
        self.age = self.age[index]
        self._pitch_ages = self.age[:, :NUM_PITCHES]
        if self._buffer.shape[0] != self.age.shape[0]:
            self._new_buffer()
        if self.later is not None:
            self.later = self.later[index]
        if self.rest is not None:
            self.rest = self.rest[index]
        if self.velocity_ok is not None:
            self.velocity_ok = self.velocity_ok[index]
        if self.pitch_ok is not None:
            self.pitch_ok = self.pitch_ok[index]
        if self.penalty is not None:
            self.penalty = self.penalty[index]
        self._prompt_row = self._prompt_row[index]
        self.rows = len(index)

    # --- reading the state ----------------------------------------------------------------------

    @property
    def keys(self) -> list[Key | None]:
        """The key each row plays in (None where no key applies)."""
        return [self._keys[i] for i in self._prompt_row.tolist()]

    def sounding(self) -> torch.Tensor:
        """bool [B, 128]: pitches sounding now."""
        return self._pitch_ages >= 0

    def ages(self) -> torch.Tensor:
        """long [B, 128]: steps each sounding note has sounded (0 = struck in this step), -1 where silent."""
        return self._pitch_ages.clamp(min=-1)
