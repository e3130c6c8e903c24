"""Decoding: greedy, sampling (temperature, top-k, top-p) and beam search over any amadeus model.

Arguments mean what they mean in Hugging Face `generate()`: greedy unless `do_sample`; `temperature`,
`top_k` (0 = off) and `top_p` (1.0 = off) reshape the distribution only when sampling, applied in that
order; `num_beams > 1` is beam search (beam-search multinomial sampling with `do_sample`);
`num_return_sequences` samples that many continuations per prompt, or returns that many best beams.
The result holds the prompt followed by the new tokens, like Hugging Face's.

Models follow the protocol of `amadeus.models`: `prefill(ids [B,T], **model_kwargs) -> (logits
[B,V], state)`, `step(ids [B], state) -> (logits [B,V], state)` and `reorder_state(state, index)`.
An empty prompt is a `[B, 0]` tensor: the model then starts from its own start token (prefill
handles T = 0), or, if it defines `bos_id`, from that id, which is not returned.

Ids at or above PAD_ID (388; Perceiver AR has a PAD logit) are never produced. A sequence that has
reached `max_seconds` of music (summed TIME_SHIFT events) stops; it is padded with PAD_ID until the
whole batch stops, as Hugging Face pads after EOS.

Playing rules (amadeus.playing_rules) act as Hugging Face's logits processors, before temperature,
top-k and top-p: `rules` (default: `DEFAULT_RULES`, no musician rule) masks, in every decoding
mode alike, the events the decoder would drop or cut and those the rules forbid, tracking what
sounds in `amadeus.performance_state` (the prompt is replayed first). That is on by default because
unmasked sampling leaves a wall of held notes; `rules=None` decodes the raw model distribution (for
scoring, or any use that needs the model's own probabilities). Scores and beam scores are then
log-probabilities under the masked, renormalised distribution. The codec the ids will be decoded
with (`codec`: flavour, max_note_seconds; default magenta, 5 s) sets velocity bins and the note cap.
With a conditional Performance RNN, `rules.controls` ("prompt" by default) passes a control vector
made from each prompt (`playing_rules.prompt_controls`) unless `model_kwargs` gives `controls`.

    ids = generate(model, prompt, 500, do_sample=True, top_p=0.95, seed=0)   # or, with GenerationMixin,
    ids = model.generate(prompt, 500, do_sample=True, top_p=0.95, seed=0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from amadeus.codec import CodecConfig
from amadeus.errors import UserError
from amadeus.performance_state import PerformanceState
from amadeus.playing_rules import DEFAULT_RULES, PlayingRules, prompt_controls
from amadeus.vocab import PAD_ID, STEPS_PER_SECOND, TIME_SHIFT, TIME_SHIFT_LAST

PromptLike = torch.Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]] | None


def check_args(*, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               num_beams: int = 1, num_return_sequences: int = 1, do_sample: bool = False,
               max_seconds: float | None = None, batch_size: int = 1) -> None:
    """Raise a one-line UserError for any value outside what the decoder accepts."""
    def bad(name: str, value: Any, rule: str) -> UserError:
        return UserError(f"generate: {name}={value!r} is invalid; {rule}")

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise bad("max_new_tokens", max_new_tokens, "use an integer >= 0")
    if not isinstance(temperature, (int, float)) or not temperature > 0 or not np.isfinite(temperature):
        raise bad("temperature", temperature, "use a number > 0 (1.0 = unchanged; greedy is do_sample=False)")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise bad("top_k", top_k, "use an integer >= 0 (0 = off)")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise bad("top_p", top_p, "use a number in (0, 1] (1.0 = off)")
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise bad("num_beams", num_beams, "use an integer >= 1 (1 = no beam search)")
    if isinstance(num_return_sequences, bool) or not isinstance(num_return_sequences, int) \
            or num_return_sequences < 1:
        raise bad("num_return_sequences", num_return_sequences, "use an integer >= 1")
    if num_beams > 1 and num_return_sequences > num_beams:
        raise bad("num_return_sequences", num_return_sequences,
                  f"beam search returns at most num_beams={num_beams} sequences")
    if num_beams == 1 and num_return_sequences > 1 and not do_sample:
        raise bad("num_return_sequences", num_return_sequences,
                  "greedy decoding gives one sequence per prompt; set do_sample=True or num_beams > 1")
    if max_seconds is not None and (not isinstance(max_seconds, (int, float)) or not max_seconds > 0):
        raise bad("max_seconds", max_seconds, "use a number of seconds > 0, or None for no limit")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise bad("batch_size", batch_size, "use an integer >= 1")


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the `top_k` largest logits per row (ties at the cut-off are kept), the rest -> -inf."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches `top_p`.

    A token is dropped when the tokens ranked above it already hold `top_p` of the mass, so the most
    likely token always stays (Holtzman et al. 2020, as in Hugging Face's TopPLogitsWarper).
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_before >= top_p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def warp(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then top-p (Hugging Face's order); raises if a row has nothing left."""
    if temperature != 1.0:
        logits = logits / temperature
    logits = top_p_filter(top_k_filter(logits, top_k), top_p)
    _check_not_empty(logits)
    return logits


def _check_not_empty(scores: torch.Tensor) -> None:
    # NaN compares false, so a NaN row counts as empty too.
    if not bool((scores > float("-inf")).any(dim=-1).all()):
        raise UserError("generate: no token left to choose after filtering (the model returned only -inf/NaN "
                        "logits for the allowed ids); check the checkpoint, or loosen top_k/top_p")


def _as_prompt(prompt_ids: PromptLike, batch_size: int, device: torch.device) -> torch.Tensor:
    if prompt_ids is None:
        return torch.zeros((batch_size, 0), dtype=torch.long, device=device)
    ids = torch.as_tensor(np.asarray(prompt_ids) if not isinstance(prompt_ids, torch.Tensor) else prompt_ids)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise UserError(f"generate: prompt ids must be integers, got {ids.dtype}")
    if ids.ndim == 1:
        ids = ids.unsqueeze(0)
    if ids.ndim != 2:
        raise UserError(f"generate: prompt ids must have shape [T] or [B, T], got {tuple(ids.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= PAD_ID):
        raise UserError(f"generate: prompt ids must lie in 0..{PAD_ID - 1}, got {int(ids.min())}..{int(ids.max())}")
    return ids.to(device=device, dtype=torch.long)


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


class _Clock:
    """Seconds of music per sequence, counted in 10 ms TIME_SHIFT steps, to stop at `max_seconds`."""

    def __init__(self, width: int, rows: int, max_seconds: float | None, device: torch.device):
        self.limit = None if max_seconds is None else round(max_seconds * STEPS_PER_SECOND)
        self.steps = torch.zeros(rows, dtype=torch.long, device=device)
        self.shift = torch.zeros(width, dtype=torch.long, device=device)
        last = min(TIME_SHIFT_LAST, width - 1)
        if last >= TIME_SHIFT:
            self.shift[TIME_SHIFT:last + 1] = torch.arange(1, last - TIME_SHIFT + 2, device=device)

    def advance(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """Add the tokens' time; return which rows have reached the limit (None without a limit)."""
        if self.limit is None:
            return None
        self.steps += self.shift[tokens]
        return self.steps >= self.limit

    def reorder(self, index: torch.Tensor) -> None:
        self.steps = self.steps[index]


@torch.no_grad()
def generate(model: torch.nn.Module, prompt_ids: PromptLike = None, max_new_tokens: int = 256, *,
             do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             num_beams: int = 1, num_return_sequences: int = 1, seed: int | None = None,
             batch_size: int = 1, max_seconds: float | None = None,
             model_kwargs: Mapping[str, Any] | None = None, rules: PlayingRules | None = DEFAULT_RULES,
             codec: CodecConfig | None = None,
             return_scores: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Continue `prompt_ids` ([T] or [B, T]; None = from the model's start, `batch_size` rows).

    Returns LongTensor [B * num_return_sequences, T + n] (prompt, then n <= max_new_tokens new ids;
    rows that stopped early at `max_seconds` are padded with PAD_ID). With `return_scores`, also the
    summed log-probability (nats, untempered; under the rules' masks when `rules` is not None) of
    each row's new tokens; for beam search that is the beam score. `rules`: see the module docstring
    (None = raw sampling). `seed` makes the result repeatable without touching the global RNG.
    """
    check_args(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
               num_beams=num_beams, num_return_sequences=num_return_sequences, do_sample=do_sample,
               max_seconds=max_seconds, batch_size=batch_size)
    if rules is not None and not isinstance(rules, PlayingRules):
        raise UserError(f"generate: rules must be PlayingRules or None, got {type(rules).__name__}")
    device = _model_device(model)
    prompt = _as_prompt(prompt_ids, batch_size, device)
    kwargs = dict(model_kwargs or {})
    tracker = None  # what sounds in each row, for the rules' masks
    if rules is not None:
        codec = codec or CodecConfig()
        # a checkpoint's release prior rides on its model (amadeus.checkpoint.load_model sets it)
        tracker = PerformanceState(prompt, rules, flavour=codec.flavour,
                                   decoder_max_note_seconds=codec.max_note_seconds, device=device,
                                   release_prior=getattr(model, "release_prior", None))
        kwargs.update(_controls(model, prompt, rules, kwargs))
    # A model that cannot start from nothing names its first token as `bos_id` (Hugging Face's
    # bos_token_id); it is fed as the prompt and left out of the result.
    bos = getattr(model, "bos_id", None) if prompt.shape[1] == 0 else None
    if bos is not None:
        prompt = torch.full((prompt.shape[0], 1), int(bos), dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [],
                                   enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            if num_beams > 1:
                ids, scores = _beam_search(model, prompt, max_new_tokens, num_beams, num_return_sequences,
                                           do_sample, temperature, top_k, top_p, max_seconds, kwargs, tracker)
            else:
                if num_return_sequences > 1:
                    repeat = torch.arange(prompt.shape[0], device=device).repeat_interleave(num_return_sequences)
                    prompt = prompt[repeat]
                    if tracker is not None:
                        tracker.reorder(repeat)
                    if isinstance(kwargs.get("controls"), torch.Tensor):
                        kwargs["controls"] = kwargs["controls"][repeat]
                ids, scores = _sample(model, prompt, max_new_tokens, do_sample, temperature, top_k, top_p,
                                      max_seconds, kwargs, return_scores, tracker)
    finally:
        model.train(was_training)
    if bos is not None:
        ids = ids[:, 1:]
    return (ids, scores) if return_scores else ids


def _controls(model, prompt: torch.Tensor, rules: PlayingRules, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """{"controls": [B, 24]} for a model conditioned on controls, as `rules.controls` asks; else {}."""
    explicit = not isinstance(rules.controls, str)
    if not getattr(model, "uses_controls", False):
        if explicit:
            family = getattr(model, "family", type(model).__name__)
            raise UserError(f"generate: controls were given, but this {family} model was trained without them")
        return {}
    if "controls" in kwargs:  # the caller's own controls win
        return {}
    vectors = [prompt_controls(row, rules) for row in prompt.cpu().numpy()]
    if all(v is None for v in vectors):
        return {}
    from amadeus.controls import control_vector

    rows = [control_vector() if v is None else v for v in vectors]  # a row with nothing to go on: neutral
    return {"controls": torch.as_tensor(np.stack(rows), device=prompt.device)}


def _prefill(model, prompt: torch.Tensor, kwargs: dict):
    try:
        return model.prefill(prompt, **kwargs)
    except TypeError as e:
        if kwargs and "unexpected keyword" in str(e):
            family = getattr(model, "family", type(model).__name__)
            raise UserError(f"generate: the {family} model takes no prefill argument(s) "
                            f"{', '.join(sorted(kwargs))} ({e})") from None
        raise
    except ValueError as e:  # a value the model cannot take, e.g. more latents than it has
        raise UserError(f"generate: {e}") from None


def _real(logits: torch.Tensor) -> torch.Tensor:
    # Drop the PAD logit (and anything past it): samplers never emit PAD as a musical event.
    return logits[..., :PAD_ID] if logits.shape[-1] > PAD_ID else logits


def draw(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """One sampled id per row from softmax(warp(logits)) (the same distribution), in fewer ops.

    This is the per-step hot path (at batch 1 each torch op costs a few microseconds): the nucleus
    is cut on the sorted probabilities and sampled there, instead of scattering a mask back and
    normalising again; and the draw is an exponential race, argmax(p_i / E_i) with E_i ~ Exp(1),
    which picks i with probability p_i / sum(p) (what torch.multinomial does, without its
    argument checks, which cost more than the draw at this size).
    """
    if temperature != 1.0:
        logits = logits / temperature
    logits = top_k_filter(logits, top_k)
    probs = logits.softmax(dim=-1)
    order = None
    if top_p < 1.0:
        probs, order = torch.sort(probs, dim=-1, descending=True)
        probs = probs * ((probs.cumsum(dim=-1) - probs) < top_p)  # the first one is always kept (0 < top_p)
    race = probs / torch.empty_like(probs).exponential_(generator=generator)
    best, pick = race.max(dim=-1, keepdim=True)
    if not bool((best > 0).all()):  # NaN (softmax of an all -inf row) or nothing left
        _check_not_empty(logits)
        raise UserError("generate: the model returned NaN logits; check the checkpoint")
    return (pick if order is None else order.gather(1, pick)).squeeze(1)


def _sample(model, prompt, max_new_tokens, do_sample, temperature, top_k, top_p, max_seconds, kwargs,
            want_scores, tracker: PerformanceState | None):
    """Greedy or ancestral sampling, one token per row per step (scores only when asked)."""
    rows = prompt.shape[0]
    scores = torch.zeros(rows, device=prompt.device)
    if max_new_tokens == 0:
        return prompt, scores
    logits, state = _prefill(model, prompt, kwargs)
    clock = _Clock(_real(logits).shape[-1], rows, max_seconds, prompt.device)
    done = torch.zeros(rows, dtype=torch.bool, device=prompt.device)
    any_done = False  # masking finished rows costs ops; skip it until a row finishes
    tokens = []  # stacked once at the end: one op per step fewer than writing into a buffer
    for t in range(max_new_tokens):
        logits = _real(logits).float()
        if tracker is not None:
            logits = tracker.mask(logits)
        if do_sample:
            token = draw(logits, temperature, top_k, top_p)
        else:
            _check_not_empty(logits)
            token = logits.argmax(dim=-1)
        if any_done:
            token = token.masked_fill(done, PAD_ID)
        if want_scores:
            logp = logits.log_softmax(dim=-1).gather(1, token.clamp(max=logits.shape[-1] - 1)[:, None])
            scores += logp.squeeze(1).masked_fill(done, 0.0)
        tokens.append(token)
        if tracker is not None:
            tracker.update(token)
        if max_seconds is not None:
            # time only grows (finished rows add PAD = 0 s), so "reached the limit" never reverts
            done = clock.advance(token.masked_fill(done, 0) if any_done else token)
            any_done = bool(done.any())
            if any_done and bool(done.all()):
                break
        if t + 1 < max_new_tokens:
            # Finished rows keep stepping on a harmless id; their outputs are ignored.
            logits, state = model.step(token.masked_fill(done, 0) if any_done else token, state)
    return torch.cat([prompt, torch.stack(tokens, dim=1)], dim=1), scores


def _beam_search(model, prompt, max_new_tokens, num_beams, num_return, do_sample, temperature, top_k,
                 top_p, max_seconds, kwargs, tracker: PerformanceState | None):
    """Beam search over summed log-probabilities (log_softmax per step, added along the beam).

    All beams have the same length (there is no end token), so no length penalty is needed; a beam
    that reaches `max_seconds` is finished and carries its score unchanged (PAD at log-prob 0), which
    favours beams that reach the limit in fewer events, as length_penalty=0 does in Hugging Face.
    """
    batch, device = prompt.shape[0], prompt.device
    k = num_beams
    if max_new_tokens == 0:
        ids = prompt.repeat_interleave(num_return, dim=0)
        return ids, torch.zeros(ids.shape[0], device=device)
    logits, state = _prefill(model, prompt, kwargs)
    # One prefill per prompt, then copy its state to the k beams.
    expand = torch.arange(batch, device=device).repeat_interleave(k)
    state = model.reorder_state(state, expand)
    logits = logits[expand]
    if tracker is not None:
        tracker.reorder(expand)
    width = _real(logits).shape[-1]  # the PAD candidate gets column `width`
    clock = _Clock(width + 1, batch * k, max_seconds, device)
    beam_scores = torch.zeros(batch, k, device=device)
    beam_scores[:, 1:] = float("-inf")  # at first all beams are equal: only beam 0 may expand
    done = torch.zeros(batch * k, dtype=torch.bool, device=device)
    seqs = torch.full((batch * k, max_new_tokens), PAD_ID, dtype=torch.long, device=device)
    n = max_new_tokens
    offsets = (torch.arange(batch, device=device) * k)[:, None]
    for t in range(max_new_tokens):
        real = _real(logits).float()
        if tracker is not None:
            real = tracker.mask(real)
        _check_not_empty(real)
        logp = real.log_softmax(dim=-1)
        pad_col = torch.full((batch * k, 1), float("-inf"), device=device)
        logp = torch.cat([logp.masked_fill(done[:, None], float("-inf")), pad_col.masked_fill(done[:, None], 0.0)],
                         dim=1)
        total = (beam_scores.reshape(-1, 1) + logp).reshape(batch, k * (width + 1))
        if do_sample:
            # Hugging Face's beam sampling: warp the running scores, draw k distinct candidates, keep them
            # ordered by their true scores.
            probs = warp(total, temperature, top_k, top_p).softmax(dim=-1)
            live = int((probs > 0).sum(dim=-1).min())
            pick = torch.multinomial(probs, min(k, live))
            if pick.shape[1] < k:  # fewer candidates than beams: fill with the best remaining ones
                rest = torch.topk(total.scatter(1, pick, float("-inf")), k - pick.shape[1], dim=-1).indices
                pick = torch.cat([pick, rest], dim=1)
            chosen = total.gather(1, pick)
            chosen, order = chosen.sort(dim=-1, descending=True)
            pick = pick.gather(1, order)
        else:
            chosen, pick = torch.topk(total, k, dim=-1)
        beam_scores = chosen
        origin = (offsets + torch.div(pick, width + 1, rounding_mode="floor")).reshape(-1)
        column = (pick % (width + 1)).reshape(-1)
        token = column.masked_fill(column == width, PAD_ID)
        seqs = seqs[origin]
        seqs[:, t] = token
        done = done[origin]
        clock.reorder(origin)
        state = model.reorder_state(state, origin)
        if tracker is not None:
            tracker.reorder(origin)
            tracker.update(token)
        reached = clock.advance(column.masked_fill(done, 0))
        if reached is not None:
            done = done | reached
            # Beams are sorted best first; finished scores are fixed and live ones only fall, so once the
            # best `num_return` beams of every prompt are finished nothing can overtake them.
            if bool(done.reshape(batch, k)[:, :num_return].all()):
                n = t + 1
                break
        if t + 1 < max_new_tokens:
            logits, state = model.step(token.masked_fill(token >= PAD_ID, 0), state)
    # topk/sort kept the beams of each prompt best first.
    keep = (offsets + torch.arange(num_return, device=device)).reshape(-1)
    ids = torch.cat([prompt.repeat_interleave(num_return, dim=0), seqs[keep, :n]], dim=1)
    return ids, beam_scores[:, :num_return].reshape(-1)


class GenerationMixin:
    """`model.generate(...)` for any protocol model, as in Hugging Face: `class M(GenerationMixin, nn.Module)`."""

    def generate(self, prompt_ids: PromptLike = None, max_new_tokens: int = 256, **kwargs: Any):
        return generate(self, prompt_ids, max_new_tokens, **kwargs)  # type: ignore[arg-type]
