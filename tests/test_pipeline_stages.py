"""The generate -> evaluate wiring and the score stage, on a tiny workspace: a processed dataset of
synthetic performances (train, validation and test pieces), tiny real checkpoints (fp32, int8), the
stages' own `run` and their scripts."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mido
import numpy as np
import pretty_midi
import pytest
import torch
import yaml

from amadeus import codec, data, release_prior
from amadeus.errors import UserError
from amadeus.generation import continue_midi, load
from amadeus.models.perceiver_ar import PerceiverAR, PerceiverARConfig
from amadeus.models.performance_rnn import PerformanceRNN, PerformanceRNNConfig
from amadeus.pipeline import evaluate as evaluate_stage
from amadeus.pipeline import generate as generate_stage
from amadeus.pipeline import paths
from amadeus.pipeline import score as score_stage
from amadeus.pipeline.eval_prompts import held_out, prompt_config
from amadeus.quant import quantize_model
from amadeus.report import summary
from amadeus.vocab import EVENT_CLASSES, VOCAB_SIZE

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ["train", "train", "validation", "test"]
PRIOR = release_prior.ReleasePrior([0.5 * (k % 3) for k in range(len(release_prior.AGE_EDGES))])


def performance(rng: np.random.Generator, seconds: float) -> pretty_midi.PrettyMIDI:
    """A plausible piano part: a few notes a second in a middle register, varied lengths and loudness."""
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    t = 0.0
    while t < seconds - 1.0:
        length = float(rng.uniform(0.1, 0.8))
        piano.notes.append(pretty_midi.Note(int(rng.integers(40, 100)), int(rng.integers(48, 84)), t, t + length))
        t += float(rng.uniform(0.05, 0.4))
    pm.instruments.append(piano)
    return pm


def tiny_rnn(seed: int = 0) -> PerformanceRNN:
    torch.manual_seed(seed)
    return PerformanceRNN(PerformanceRNNConfig(embed_dim=8, input_size=16, hidden_size=16, num_layers=1,
                                               dropout=0.0, controls=False)).eval()


def tiny_perceiver(seed: int = 0) -> PerceiverAR:
    torch.manual_seed(seed)
    return PerceiverAR(PerceiverARConfig(max_seq_len=32, max_latents=16, num_channels=16, num_heads=2,
                                         num_self_attention_layers=1)).eval()


def save_checkpoint(path: Path, net: torch.nn.Module, **extra) -> None:
    """A .sess as the contract describes it (docs/contracts.md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "amadeus.sess/1", "family": net.family, "config": dataclasses.asdict(net.config),
                "precision": "fp32", "model": net.state_dict(), "step": 0, "params": {},
                "codec": {"flavour": "magenta"}, **extra}, path)


def params(**generate) -> dict:
    return {"models": {"performance_rnn": dataclasses.asdict(tiny_rnn().config)}, "datasets": ["mine"],
            "codec": {"flavour": "magenta", "max_note_seconds": 5.0},
            "generate": {"precisions": ["fp32", "int8"], "unconditioned": 1, "eval_prompts": 4,
                         "prompt_seconds": 2.0, "eval_seconds": 3.0, "showcase": 2, "max_new_tokens": 400,
                         "seconds": 2.0, "render": False, **generate},
            "score": {"nll_window": 24, "nll_max_windows": 4, "events_per_piece": 300, "threads": 1},
            "evaluate": {"segment_seconds": 3.0, "bootstrap": 100, "overlap_bootstrap": 20}}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """dataset/processed/mine (two train pieces, one validation, one test) and save/performance_rnn{,.int8}.sess
    (the fp32 one with a release prior, which quantize copies into the int8 one)."""
    rng = np.random.default_rng(3)
    folder = paths.processed_dir("mine", tmp_path)
    pieces = []
    for i, split in enumerate(SPLITS):
        ids = codec.encode(performance(rng, 40.0))
        data.save_events(folder / f"p{i}.data", ids)
        pieces.append({"name": f"p{i}", "file": f"p{i}.data", "split": split, "events": len(ids)})
    (folder / "manifest.json").write_text(json.dumps({"pieces": pieces, "codec": {"flavour": "magenta"}}))
    prior = {"release_prior": PRIOR.as_dict()}
    save_checkpoint(paths.checkpoint("performance_rnn", root=tmp_path), tiny_rnn(), **prior)
    q = copy.deepcopy(tiny_rnn())
    info = quantize_model(q, None)
    save_checkpoint(paths.checkpoint("performance_rnn", "int8", tmp_path), tiny_rnn(), precision="int8",
                    model=q.state_dict(), quant=info, **prior)
    return tmp_path


def _script(name: str, cwd: Path, *args: str, config: dict | None = None) -> subprocess.CompletedProcess:
    if config is not None:
        (cwd / "params.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), *args], cwd=cwd, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT / "lib")}, timeout=300)


# --- generate -------------------------------------------------------------------------------------

def test_generate_continues_the_held_out_prompts_with_the_pieces_seeds(workspace: Path):
    config = params()
    (workspace / "input").mkdir()
    performance(np.random.default_rng(9), 3.0).write(str(workspace / "input" / "my phrase.mid"))
    metrics = generate_stage.run(config, workspace, "performance_rnn", quiet=True)

    held = held_out(workspace, ["mine"], prompt_config(config["generate"]))
    assert len(held.prompts) == 4 and {p.piece for p in held.prompts} == {"mine:p2", "mine:p3"}
    loaded = load(paths.checkpoint("performance_rnn", root=workspace))
    by_precision = {}
    for precision in ("fp32", "int8"):
        folder = paths.eval_dir("performance_rnn", precision, workspace)
        index = json.loads((folder / "index.json").read_text())
        assert index["prompts"] == held.settings and index["skipped"] is None
        listed = index["continuations"]
        assert [c["name"] for c in listed] == [p.name for p in held.prompts]
        assert [c["seed"] for c in listed] == [0, 1, 2, 3]  # piece i of the group: seed + i
        ids = [np.load(folder / c["file"]) for c in listed]
        assert all(a.dtype == np.uint16 and len(a) == c["events"] for a, c in zip(ids, listed, strict=True))
        assert all(c["seconds"] >= 3.0 or c["events"] == 400 for c in listed)
        assert not list(folder.glob("*.mid")) and not list(folder.glob("*.wav"))  # ids only
        by_precision[precision] = ids
    # What the stage wrote is continue_midi's continuation of the prompt, with the prompt's seed.
    j = 2
    again = continue_midi(loaded, None, prompt_ids=held.prompts[j].ids, seconds=3.0, max_new_tokens=400,
                          top_p=0.95, seed=j, max_note_seconds=5.0)
    assert np.array_equal(by_precision["fp32"][j], again["ids"])

    pieces = json.loads((paths.pieces_dir("performance_rnn", "fp32", workspace) / "index.json").read_text())
    names = [p["name"] for p in pieces["pieces"]]
    assert names[0] == "uncond_00" and names[-1] == "input_my_phrase"
    # The input file's own messages open its full MIDI, as played (not re-binned by the event codec).
    played = mido.MidiFile(workspace / "input" / "my phrase.mid")
    full = mido.MidiFile(paths.pieces_dir("performance_rnn", "fp32", workspace) / "input_my_phrase.full.mid")
    assert full.ticks_per_beat == played.ticks_per_beat
    def notes(track):
        return [m for m in track if not m.is_meta]

    assert sum(len(notes(t)) for t in played.tracks) > 10
    assert [notes(t) for t in full.tracks[:len(played.tracks)]] == [notes(t) for t in played.tracks]
    assert len(full.tracks) == len(played.tracks) + 1  # then the continuation's own track
    showcase = [p for p in pieces["pieces"] if p["name"].startswith("eval_")]
    assert len(showcase) == 2  # the first and the last prompt, from the same generation
    out = paths.pieces_dir("performance_rnn", "fp32", workspace)
    for piece, j in zip(showcase, (0, 3), strict=True):
        assert piece["seed"] == j and held.prompts[j].name in piece["source"]
        assert np.array_equal(np.load(out / piece["files"]["ids"]), by_precision["fp32"][j])
        assert (out / piece["files"]["full"]).stat().st_size > 0

    saved = json.loads(paths.metrics_file("generate", "performance_rnn", workspace).read_text())
    assert saved == metrics and saved["precision"] == "fp32"
    assert saved["fp32"]["eval_continuations"] == saved["int8"]["eval_continuations"] == 4
    assert saved["pieces"] == 1 + 4 + 1  # unconditioned, eval prompts, input/ files
    for key in ("pieces", "tokens", "seconds_of_music"):
        assert key in saved and key in saved["fp32"] and key in saved["int8"]
    # Speeds are measurements, not results: timings/ (untracked), none in what DVC hashes.
    timings = json.loads(paths.timings_file("generate", "performance_rnn", workspace).read_text())
    for key in ("seconds", "tokens_per_second", "real_time_factor", "wall_seconds"):
        assert key in timings["fp32"] and key not in saved["fp32"]
    assert all("compute_seconds" not in c for c in index["continuations"])
    assert all("compute_seconds" not in p for p in pieces["pieces"])


def test_generate_renders_only_the_showcase_pieces(workspace: Path):
    pytest.importorskip("fluidsynth")
    generate_stage.run(params(precisions=["fp32"], render=True, eval_prompts=3, showcase=1), workspace,
                       "performance_rnn", quiet=True)
    out = paths.pieces_dir("performance_rnn", "fp32", workspace)
    assert sorted(p.stem for p in out.glob("*.wav")) == sorted(p.stem for p in out.glob("*.png"))
    assert len(list(out.glob("*.wav"))) == 2  # uncond_00 and one showcase continuation
    assert len(list(paths.eval_dir("performance_rnn", "fp32", workspace).glob("*.npy"))) == 3


def test_generate_stage_errors_name_the_key_or_the_file(workspace: Path, tmp_path_factory):
    with pytest.raises(UserError, match="generate.top_p"):
        generate_stage.run({"generate": {"top_p": 2.0}}, workspace, "performance_rnn", quiet=True)
    with pytest.raises(UserError, match="test_prompts: unknown key"):
        generate_stage.run({"generate": {"test_prompts": 4}}, workspace, "performance_rnn", quiet=True)
    with pytest.raises(UserError, match="lower generate.prompt_seconds or generate.eval_seconds"):
        generate_stage.run(params(eval_seconds=60.0), workspace, "performance_rnn", quiet=True)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(UserError, match=r"performance_rnn\.sess: checkpoint not found"):
        generate_stage.run({"generate": {"eval_prompts": 0, "render": False}}, empty, "performance_rnn", quiet=True)


def test_generate_stage_script_runs_and_fails_cleanly(workspace: Path):
    done = _script("generate", workspace, "performance_rnn", config=params(precisions=["fp32"]))
    assert done.returncode == 0, done.stderr
    assert "generate performance_rnn fp32: 5 pieces (4 eval continuations)" in done.stdout
    bad = _script("generate", workspace, "perceiver_ar")
    assert bad.returncode == 2 and "perceiver_ar.sess: checkpoint not found" in bad.stderr
    assert "Traceback" not in bad.stderr


# --- score ----------------------------------------------------------------------------------------

def test_event_terms_agree_with_the_release_prior_and_allowed_never_costs_more(workspace: Path):
    ids = data.load_split([paths.processed_dir("mine", workspace)], "test")[0][:400].astype(np.int64)
    logp = tiny_rnn().score(torch.as_tensor(ids)).float().log_softmax(-1).numpy()
    terms = score_stage.event_terms(logp, ids, PRIOR)
    figures = release_prior.score(PRIOR, [(logp, ids)])
    assert terms["allowed"].mean() == pytest.approx(figures["nll_before"], abs=1e-4)
    assert terms["allowed_prior"].mean() == pytest.approx(figures["nll_after"], abs=1e-4)
    assert terms["note_off_probability"].mean() == pytest.approx(figures["note_off_probability_before"], abs=1e-4)
    assert terms["prior_note_off_probability"].mean() == pytest.approx(figures["note_off_probability_after"],
                                                                       abs=1e-4)
    assert terms["release"].mean() == pytest.approx(figures["note_off_rate"], abs=1e-4)
    assert terms["raw"].mean() == pytest.approx(float(torch.nn.functional.cross_entropy(
        torch.as_tensor(logp), torch.as_tensor(ids))), abs=1e-4)
    # Renormalising over a subset that holds the true event can only raise its probability.
    assert (terms["allowed"] <= terms["raw"] + 1e-9).all() and (terms["allowed"] < terms["raw"]).any()
    assert "allowed_prior" not in score_stage.event_terms(logp, ids, None)


def test_score_stage_reports_nll_per_split_precision_and_class(workspace: Path):
    config = params()
    del config["generate"]  # the score stage never reads the generate settings
    result = score_stage.run(config, workspace, "performance_rnn")
    assert json.loads(paths.metrics_file("score", "performance_rnn", workspace).read_text()) == \
        json.loads(json.dumps(result))
    json.dumps(result, allow_nan=False)
    lengths = {split: [len(a) for a in data.load_split([paths.processed_dir("mine", workspace)], split)]
               for split in ("test", "validation")}
    for precision in ("fp32", "int8"):
        entry = result[precision]
        assert entry["release_prior"] is True
        for split in ("test", "validation"):
            s = entry[split]
            assert 0.5 * math.log(VOCAB_SIZE) < s["nll"] < 2 * math.log(VOCAB_SIZE)
            assert s["nll_window"] == 24 and s["nll_windows"] == 4
            assert s["scored_events"] == sum(min(n, 300) for n in lengths[split])
            assert s["allowed_nll"] < s["raw_nll"] and s["allowed_prior_nll"] != s["allowed_nll"]
            assert set(s["class_nll"]) == set(EVENT_CLASSES)
            assert sum(c["events"] for c in s["class_nll"].values()) == s["scored_events"]
            weighted = sum(c["raw"] * c["events"] for c in s["class_nll"].values()) / s["scored_events"]
            assert weighted == pytest.approx(s["raw_nll"], abs=1e-3)
            assert 0 < s["note_off_rate"] < 0.5 and 0 < s["note_off_probability"] < 1
    assert result["test_nll"] == result["fp32"]["test"]["nll"]
    assert result["int8"]["test"]["nll"] == pytest.approx(result["fp32"]["test"]["nll"], abs=0.1)


def test_score_stage_without_a_prior_and_for_the_perceiver_ar(workspace: Path):
    save_checkpoint(paths.checkpoint("perceiver_ar", root=workspace), tiny_perceiver())
    config = {**params(), "score": {"precisions": ["fp32"], "splits": ["test"], "events_per_piece": 0,
                                    "nll_max_windows": 2, "threads": 1}}
    result = score_stage.run(config, workspace, "perceiver_ar")
    test = result["fp32"]["test"]
    assert result["fp32"]["release_prior"] is False and "allowed_prior_nll" not in test
    assert test["nll_window"] == 32  # the model's context length, capped at max_seq_len
    assert test["scored_events"] == sum(len(a) for a in data.load_split([paths.processed_dir("mine", workspace)],
                                                                         "test"))
    assert "validation" not in result["fp32"]
    with pytest.raises(UserError, match=r"perceiver_ar\.int8\.sess: checkpoint not found"):
        score_stage.run({**config, "score": {"precisions": ["int8"]}}, workspace, "perceiver_ar")


def test_score_stage_script(workspace: Path):
    done = _script("score", workspace, "performance_rnn", config=params())
    assert done.returncode == 0, done.stderr
    assert "score performance_rnn fp32: test NLL" in done.stdout and "score performance_rnn int8" in done.stdout


# --- evaluate -------------------------------------------------------------------------------------

def test_evaluate_scores_the_continuations_against_the_real_ones(workspace: Path):
    config = params()
    generate_stage.run(config, workspace, "performance_rnn", quiet=True)
    report = evaluate_stage.build_report(config, workspace)
    json.dumps(report, allow_nan=False)  # valid JSON: no NaN anywhere
    assert report["prompts"]["prompts"] == 4 and report["prompts"]["continuation_seconds"] == 3.0
    fp32, int8 = (report["models"]["performance_rnn"][p] for p in ("fp32", "int8"))
    assert fp32["items"] == int8["items"] == 4
    assert fp32["real"] == int8["real"]  # the same prompts, the same references
    for entry in (fp32, int8):
        assert set(entry) >= {"generated", "real", "floor", "generated_vs_real", "floor_vs_real", "mgeval"}
        m = entry["mgeval"]
        assert m["segments"] > 0 and 0 <= m["mean_overlap_low"] <= m["mean_overlap_high"] <= 1
    anchors = report["mgeval"]
    assert anchors["reference"]["segments"] == report["prompts"]["reference_segments"] > 0
    # Other real music overlaps the real continuations more than random ids do.
    assert anchors["ceiling"]["mean_overlap"] > anchors["floor"]["mean_overlap"]

    text = evaluate_stage.markdown(report)
    assert "| performance_rnn fp32 | 4 |" in text and "| performance_rnn int8 | 4 |" in text
    assert "| ceiling (train pieces) |" in text and "| floor (random ids) |" in text


def test_evaluate_with_the_real_continuations_as_generated_ones_finds_no_difference(workspace: Path):
    """Wiring check: the continuation files are read against the prompts they were made from."""
    config = params(precisions=["fp32"])
    generate_stage.run(config, workspace, "performance_rnn", quiet=True)
    held = held_out(workspace, ["mine"], prompt_config(config["generate"]))
    folder = paths.eval_dir("performance_rnn", "fp32", workspace)
    for entry, prompt in zip(json.loads((folder / "index.json").read_text())["continuations"], held.prompts,
                             strict=True):
        np.save(folder / entry["file"], prompt.reference.astype(np.uint16))
    report = evaluate_stage.build_report(config, workspace)
    entry = report["models"]["performance_rnn"]["fp32"]
    assert entry["generated"] == entry["real"]
    assert entry["generated_vs_real"]["polyphony_ratio"]["mean"] == 1.0
    assert entry["generated_vs_real"]["in_key_diff"]["mean"] == 0.0
    features = entry["mgeval"]["features"]
    assert all(features[f]["candidate_mean"] == features[f]["reference_mean"] for f in ("polyphony", "pitch_range"))
    assert entry["mgeval"]["segments"] == report["mgeval"]["reference"]["segments"]
    assert entry["mgeval"]["mean_overlap"] > report["mgeval"]["floor"]["mean_overlap"]


def test_evaluate_refuses_stale_continuations_and_notes_missing_prompts(workspace: Path):
    config = params(precisions=["fp32"])
    generate_stage.run(config, workspace, "performance_rnn", quiet=True)
    changed = params(precisions=["fp32"], eval_seconds=4.0)
    with pytest.raises(UserError, match="rerun the generate stage"):
        evaluate_stage.build_report(changed, workspace)
    none = evaluate_stage.build_report(params(eval_prompts=0), workspace)
    assert none["models"] == {} and "eval_prompts is 0" in none["note"]
    assert "eval_prompts is 0" in evaluate_stage.markdown(none)


def test_evaluate_stage_script_writes_the_report_and_its_markdown(workspace: Path):
    config = params(precisions=["fp32"])
    generate_stage.run(config, workspace, "performance_rnn", quiet=True)
    done = _script("evaluate", workspace, config=config)
    assert done.returncode == 0, done.stderr
    report = json.loads(paths.metrics_file("evaluate", root=workspace).read_text())
    assert report == json.loads(json.dumps(evaluate_stage.build_report(config, workspace)))
    text = paths.metrics_file("evaluate", root=workspace, suffix=".md").read_text()
    assert text == evaluate_stage.markdown(report)
    assert "evaluate: wrote output/metrics/evaluate.json and evaluate.md" in done.stdout

    # `amadeus report` reads what the stages wrote.
    score_stage.run(config, workspace, "performance_rnn")
    text = summary(paths.metrics_dir(workspace))
    assert "generate performance_rnn fp32: 5 pieces (4 of held-out prompts)" in text
    assert "score performance_rnn fp32: test NLL" in text and "with the release prior" in text
    assert "evaluate performance_rnn fp32: 4 prompts; vs real: polyphony x" in text
    assert "evaluate anchors: mean overlap" in text
