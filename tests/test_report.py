"""`amadeus report`: the short summary of the metrics files."""

from amadeus.fileio import write_json
from amadeus.report import summary


def test_summary_reads_each_stage_and_says_when_nothing_ran(tmp_path):
    assert "run `dvc repro`" in summary(tmp_path)
    timings = tmp_path / "timings"
    write_json(tmp_path / "train_performance_rnn.json", {"parameters": 1000, "steps": 10, "stopped_by": "max_steps",
               "val_nll": 3.0, "unigram_nll": 4.0})
    write_json(timings / "train_performance_rnn.json", {"seconds_in_steps": 5.0, "tokens_per_second": 123.4})
    write_json(tmp_path / "quantize_performance_rnn.json", {"size_ratio": 0.255, "val_nll_fp32": 3.0,
               "val_nll_int8": 3.03, "nll_delta_rel": 0.01})
    write_json(timings / "quantize_performance_rnn.json", {"tokens_per_second_fp32": 1000,
                                                           "tokens_per_second_int8": 2500})
    write_json(tmp_path / "generate_performance_rnn.json", {
        "pieces": 2, "precision": "fp32", "fp32": {"pieces": 2}, "int8": {"pieces": 18, "eval_continuations": 16}})
    write_json(timings / "generate_performance_rnn.json", {
        "fp32": {"tokens_per_second": 500.0, "real_time_factor": 20.0},
        "int8": {"tokens_per_second": 1500.0, "real_time_factor": 60.0, "wall_seconds": 41.6}})
    text = summary(tmp_path, timings)
    assert "generate performance_rnn fp32: 2 pieces, 500 events/s, 20.0x real time" in text
    assert "generate performance_rnn int8: 18 pieces (16 of held-out prompts), 1,500 events/s, 60.0x real time, " \
        "42 s in all" in text
    assert "train performance_rnn: 1,000 parameters, 10 steps (stopped by max_steps), last run 5 s in steps" in text
    assert "(25.0% below)" in text
    assert "size x0.255, NLL on quantize's windows 3.0000 -> 3.0300 (+1.00%), 1,000 -> 2,500 tokens/s" in text
    assert "evaluate" not in text and "score" not in text
    # Without timings (another machine's results, pulled from a remote) the results still print.
    assert "generate performance_rnn int8: 18 pieces (16 of held-out prompts)\n" in summary(tmp_path) + "\n"
    write_json(tmp_path / "train_performance_rnn.json", {"parameters": 1000, "steps": 7, "stopped_by": "max_seconds",
               "val_nll": 3.0, "unigram_nll": 4.0})
    assert "7 steps (stopped by THE TIME CAP train.max_seconds: cut short" in summary(tmp_path)


def test_summary_prints_the_score_and_evaluate_figures(tmp_path):
    interval = {"mean": 1.5, "low": 1.2, "high": 1.8}
    write_json(tmp_path / "score_perceiver_ar.json", {"family": "perceiver_ar", "test_nll": 2.5, "settings": {},
               "fp32": {"release_prior": True, "test": {
                   "nll": 2.5, "nll_windows": 32, "nll_window": 256,
                   "raw_nll": 2.4, "allowed_nll": 2.2, "allowed_prior_nll": 2.1,
                   "note_off_probability": 0.12, "prior_note_off_probability": 0.2, "note_off_rate": 0.25,
                   "class_nll": {"note_on": {"raw": 3.0, "events": 5}, "note_off": {"raw": 2.0, "events": 5},
                                 "time_shift": {"raw": 1.0, "events": 5}, "velocity": {"raw": None, "events": 0}}},
                   "validation": {"nll": 2.6}}})
    write_json(tmp_path / "evaluate.json", {"models": {"perceiver_ar": {
        "fp32": {"items": 16, "generated_vs_real": {"polyphony_ratio": interval, "notes_per_second_ratio": interval,
                                                     "long_notes_diff": {"mean": 0.05, "low": 0.01, "high": 0.09},
                                                     "in_key_diff": {"mean": -0.1, "low": None, "high": None}},
                 "mgeval": {"mean_overlap": 0.5, "mean_overlap_low": 0.4, "mean_overlap_high": 0.6}},
        "int8": {"note": "the data is magenta-encoded but this checkpoint uses perceiver-io"}}},
        "mgeval": {"ceiling": {"mean_overlap": 0.8}, "floor": {"mean_overlap": 0.1, "mean_overlap_low": 0.05,
                                                               "mean_overlap_high": 0.15}}})
    text = summary(tmp_path)
    assert ("score perceiver_ar fp32: test NLL 2.500; validation NLL 2.600 (score's 32 windows of 256 events per "
            "split); per class note_on 3.00 note_off 2.00 "
            "time_shift 1.00; allowed events 2.200 -> 2.100 with the release prior (note-off probability 0.12 -> "
            "0.20, rate 0.25)") in text
    assert ("evaluate perceiver_ar fp32: 16 prompts; vs real: polyphony x1.50 [1.20, 1.80], notes/s x1.50 "
            "[1.20, 1.80], long notes +5.0 [1.0, 9.0] pts, in key -10.0 pts; mean overlap 0.50 [0.40, 0.60]") in text
    assert "evaluate perceiver_ar int8: the data is magenta-encoded" in text
    assert "evaluate anchors: mean overlap 0.80 for the train pieces, 0.10 [0.05, 0.15] for random ids" in text
