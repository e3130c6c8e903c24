"""Perceiver AR: released layout, causality, padding, exact cached generation, perceiver-io conformance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from amadeus.errors import UserError
from amadeus.models import parameter_count
from amadeus.models.perceiver_ar import (
    PerceiverAR,
    PerceiverARConfig,
    rotate_pairs,
    sam_giant_midi_config,
)
from amadeus.params import build
from amadeus.vocab import PAD_ID

FIXTURE = Path(__file__).parent / "fixtures" / "perceiver_io"
PAD = PAD_ID


def tiny(**kw) -> PerceiverAR:
    cfg = dict(max_seq_len=24, max_latents=8, num_channels=32, num_heads=2, num_self_attention_layers=2,
               init_scale=0.3)
    cfg.update(kw)
    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig(**cfg)).eval()
    with torch.no_grad():  # distinct LayerNorms, so q_norm/kv_norm mix-ups show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def test_released_config_has_exactly_134_840_832_parameters():
    with torch.device("meta"):
        assert parameter_count(PerceiverAR(sam_giant_midi_config())) == 134_840_832
        # docs/perceiver-ar.md#parameter-count: C 512, 8 layers (MAESTRO example) is 28,531,712
        cfg = PerceiverARConfig(max_seq_len=2048, max_latents=1024, num_channels=512, num_heads=8,
                                num_self_attention_layers=8)
        assert parameter_count(PerceiverAR(cfg)) == 28_531_712


def test_config_is_validated_from_params():
    cfg = build(PerceiverARConfig, {"num_channels": 64, "max_latents": 16}, "train.perceiver_ar.model")
    assert cfg.num_channels == 64
    with pytest.raises(UserError, match="max_latents"):
        build(PerceiverARConfig, {"max_latents": 0}, "train.perceiver_ar.model")
    with pytest.raises(ValueError, match="max_latents"):
        PerceiverAR(PerceiverARConfig(max_seq_len=8, max_latents=16))


def test_rotary_rotates_adjacent_pairs():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert rotate_pairs(x).tolist() == [-2.0, 1.0, -4.0, 3.0]


def test_only_latents_get_logits_and_future_tokens_never_change_earlier_logits():
    model = tiny()
    ids = torch.randint(0, PAD, (2, 20))
    logits = model(ids, prefix_len=12)
    assert logits.shape == (2, 8, 389)
    for t in (12, 15, 19):  # change the token at position t: latents before t must not move
        changed = ids.clone()
        changed[:, t] = (changed[:, t] + 1) % PAD
        other = model(changed, prefix_len=12)
        k = t - 12
        assert torch.allclose(other[:, :k], logits[:, :k], atol=1e-6)
        assert not torch.allclose(other[:, k:], logits[:, k:], atol=1e-4)


def test_left_padding_does_not_change_the_logits_of_real_tokens():
    model = tiny()
    ids = torch.randint(0, PAD, (1, 14))
    plain = model(ids, prefix_len=6)
    padded = torch.cat([torch.full((1, 3), PAD), ids], 1)  # pads in the prefix
    assert torch.allclose(model(padded, prefix_len=9), plain, atol=1e-5)
    short = model(ids[:, :6], prefix_len=0)
    padded = torch.cat([torch.full((1, 6), PAD), ids[:, :6]], 1)  # pads in the prefix and the latents
    out = model(padded, prefix_len=4)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[:, -6:], short, atol=1e-5)


def test_loss_eval_is_deterministic_train_randomises_prefix():
    model = tiny(cross_attention_dropout=0.0)
    ids = torch.randint(0, PAD, (4, 25))
    a, b = model.loss(ids), model.loss(ids)
    assert a.item() == b.item() and 4.0 < a.item() < 12.0
    model.train()
    losses = {round(model.loss(ids).item(), 6) for _ in range(5)}
    assert len(losses) > 1
    ids[:, :5] = PAD  # padded targets are not scored: the loss stays finite
    assert torch.isfinite(model.loss(ids))


def test_training_step_reduces_loss():
    model = tiny(init_scale=0.02).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 20, (4, 25))
    first = None
    for _ in range(30):
        loss = model.loss(ids)
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def _generate(model, prompt, num_latents, steps, use_cache, latent_block=1):
    logits, state = model.prefill(prompt, num_latents=num_latents, use_cache=use_cache, latent_block=latent_block)
    out, schedule = [], []
    for _ in range(steps):
        out.append(logits)
        token = logits[:, :PAD].argmax(-1)
        logits, state = model.step(token, state)
        schedule.append((state["prefix_len"], state["ids"].shape[1]))
    return torch.stack(out, 1), schedule


@pytest.mark.parametrize("abs_pos_emb", [False, True])
def test_cached_and_uncached_generation_agree_across_transition_and_sliding(abs_pos_emb):
    model = tiny(abs_pos_emb=abs_pos_emb, num_rotary_layers=1)
    prompt = torch.randint(0, PAD, (2, 10))
    prompt[1, :3] = PAD  # a left-padded prompt in the batch
    cached, schedule = _generate(model, prompt, 3, 40, True)
    plain, schedule2 = _generate(model, prompt, 3, 40, False)
    assert schedule == schedule2
    # the schedule: latents 3 -> 8, then prefix 7 -> 16, then the 24-token window slides
    prefix, length = zip(*schedule, strict=True)
    assert prefix[0] == 7 and length[4] - prefix[4] == 8 and max(prefix) == 16 and length[-1] == 24
    assert (cached - plain).abs().max().item() <= 1e-4
    # and each uncached step equals a plain forward over the window
    assert (cached.argmax(-1) == plain.argmax(-1)).all()


@pytest.mark.parametrize("abs_pos_emb", [False, True])
@pytest.mark.parametrize("block", [2, 3, 8])
def test_block_schedule_is_exact_and_moves_blocks_of_latents(block, abs_pos_emb):
    model = tiny(abs_pos_emb=abs_pos_emb)
    prompt = torch.randint(0, PAD, (2, 10))
    prompt[1, :3] = PAD
    steps = 60
    cached, schedule = _generate(model, prompt, 3, steps, True, latent_block=block)
    plain, schedule2 = _generate(model, prompt, 3, steps, False, latent_block=block)
    assert schedule == schedule2
    assert (cached - plain).abs().max().item() <= 1e-4
    # the split of every step: latents grow to 8; then `block` of them join the prefix at once; the
    # prefix never passes 16 and the window never passes 24
    latents = [n - p for p, n in schedule]
    assert max(latents) == 8 and min(latents[5:]) == 8 + 1 - block
    assert all(b - a in (1, 1 - block) for a, b in zip(latents, latents[1:], strict=False))
    assert max(p for p, _ in schedule) == 16 and max(n for _, n in schedule) == 24
    # each step is the model's forward pass for its split (the window's tokens: the prompt and the greedy
    # continuation of row 0)
    tokens = torch.cat([prompt[0], cached[0, :-1, :PAD].argmax(-1)])
    for i in (20, 37, steps - 1):
        p, n = schedule[i - 1]  # the split after step i gives the logits of step i
        end = prompt.shape[1] + i
        window = tokens[end - n:end][None]
        assert torch.allclose(model(window, prefix_len=p)[0, -1], cached[0, i], atol=1e-4)


@pytest.mark.parametrize("block", [0, 9])
def test_block_out_of_range_is_refused(block):
    with pytest.raises(ValueError, match="latent_block"):
        tiny().prefill(torch.randint(0, PAD, (1, 5)), latent_block=block)


class FakeInt8Linear(torch.nn.Module):
    """Stands in for another module replacing nn.Linear (e.g. int8): only called, never inspected."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.w, self.b = linear.weight.detach().clone(), linear.bias
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.nn.functional.linear(x, self.w, self.b)


def test_every_linear_can_be_swapped_for_a_drop_in_module():
    model = tiny()
    prompt = torch.randint(0, PAD, (1, 10))
    expected, _ = _generate(model, prompt, 2, 20, True)
    swapped = []
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, FakeInt8Linear(child))
                swapped.append(getattr(module, name))
    assert len(swapped) == 4 + 2 + 2 * 6  # hybrid q/k/v/o + MLP, 2 self layers
    got, _ = _generate(model, prompt, 2, 20, True)
    assert torch.allclose(got, expected, atol=1e-5) and all(s.calls for s in swapped)


def test_bench_reports_cached_and_uncached_speed():
    import sys
    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    from perceiver_ar import bench_cached_vs_uncached

    out = bench_cached_vs_uncached(tiny(max_seq_len=48, max_latents=16), context=48, tokens=4)
    assert out["threads"] == 1 and out["context"] == 48
    for phase in ("growth", "sliding"):
        assert out[phase]["cached_tokens_per_second"] > 0 and out[phase]["uncached_tokens_per_second"] > 0


def test_reorder_state_selects_rows():
    model = tiny()
    prompt = torch.randint(0, PAD, (2, 10))
    _, state = model.prefill(prompt, num_latents=2)
    swapped = model.reorder_state(state, torch.tensor([1, 0]))
    tok = torch.tensor([5, 6])
    a, _ = model.step(tok, state)
    b, _ = model.step(tok.flip(0), swapped)
    assert torch.allclose(a, b.flip(0), atol=1e-6)


def test_long_prompt_keeps_the_last_window():
    model = tiny()
    prompt = torch.randint(0, PAD, (1, 40))
    logits, state = model.prefill(prompt, num_latents=1)
    assert state["ids"].shape[1] == 24 and state["prefix_len"] == 16
    assert torch.allclose(logits, model(prompt[:, -24:], prefix_len=16)[:, -1], atol=1e-5)


# -- perceiver-io conformance (fixture from tools/make_perceiver_io_fixture.py, perceiver-io 0.11.0) --

@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from amadeus.perceiver_io_import import import_perceiver_io

    dst = tmp_path_factory.mktemp("pio") / "pio.sess"
    ckpt = import_perceiver_io(FIXTURE / "model", dst)
    loaded = torch.load(dst, weights_only=True)
    model = PerceiverAR(PerceiverARConfig(**loaded["config"]))
    model.load_state_dict(loaded["model"])
    return model.eval(), loaded, ckpt


def test_import_records_family_config_and_codec_flavour(imported):
    _, loaded, _ = imported
    assert loaded["format"] == "amadeus.sess/1" and loaded["family"] == "perceiver_ar"
    assert loaded["codec"]["flavour"] == "perceiver-io" and loaded["precision"] == "fp32"
    assert loaded["config"]["num_self_attention_layers"] == 2 and loaded["config"]["max_latents"] == 16


def test_imported_logits_match_perceiver_io_forward(imported):
    model, _, _ = imported
    exp = torch.load(FIXTURE / "expected.pt", weights_only=True)
    assert exp["pad_mask"].any()
    with torch.no_grad():
        logits = model(exp["ids"], exp["prefix_len"], exp["pad_mask"])
    assert (logits - exp["logits"]).abs().max().item() <= 1e-4


def test_pads_among_latents_are_masked_here_but_not_in_perceiver_io(imported):
    """The documented divergence (docs/perceiver-ar.md#pads-among-the-latents): perceiver-io masks pads in
    the hybrid layer only, so its real latents attend to pad latents in self-attention; amadeus masks them,
    so a left-padded sequence gives its real tokens the logits they have unpadded."""
    model, _, _ = imported
    exp = torch.load(FIXTURE / "expected.pt", weights_only=True)
    real = exp["unpadded_ids"].shape[1]
    with torch.no_grad():
        ours_padded = model(exp["latent_pad_ids"], 4)[:, -real:]
        ours_unpadded = model(exp["unpadded_ids"], 0)
    assert (ours_unpadded - exp["unpadded_logits"]).abs().max().item() <= 1e-4  # no pads: the same model
    assert (ours_padded - ours_unpadded).abs().max().item() <= 1e-4  # pads masked: nothing leaks
    theirs = (exp["latent_pad_logits"][:, -real:] - exp["unpadded_logits"]).abs().max().item()
    assert theirs > 0.1  # in perceiver-io the pad latents change the real tokens' logits


@pytest.mark.parametrize("use_cache", [True, False])
def test_imported_greedy_continuation_matches_documented_schedule(imported, use_cache):
    model, _, _ = imported
    exp = torch.load(FIXTURE / "expected.pt", weights_only=True)
    steps = exp["continuation"].shape[1]
    assert steps >= 150 and len(set(exp["continuation"][0].tolist())) > 10
    logits, state = model.prefill(exp["prompt"], num_latents=exp["num_latents"], use_cache=use_cache)
    tokens, prefix_lens, window_lens = [], [], []
    for _ in range(steps):
        prefix_lens.append(state["prefix_len"])
        window_lens.append(state["ids"].shape[1])
        token = logits[:, :PAD].argmax(-1)
        tokens.append(token)
        logits, state = model.step(token, state)
    assert prefix_lens == exp["prefix_lens"].tolist() and window_lens == exp["window_lens"].tolist()
    assert max(window_lens) == 64 and window_lens[-1] == 64  # reached the sliding window
    assert torch.stack(tokens, 1).tolist() == exp["continuation"].tolist()


def test_import_rejects_wrong_directories(tmp_path):
    from amadeus.perceiver_io_import import import_perceiver_io

    with pytest.raises(UserError, match="config.json"):
        import_perceiver_io(tmp_path, tmp_path / "x.sess")
    shutil.copytree(FIXTURE / "model", tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model_config"]["num_self_attention_layers"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="do not match"):
        import_perceiver_io(tmp_path / "m", tmp_path / "x.sess")
    assert not (tmp_path / "x.sess").exists()
