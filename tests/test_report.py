"""`amadeus report`: the short summary of the metrics files."""

from amadeus.fileio import write_json
from amadeus.report import summary


def test_summary_reads_each_stage_and_says_when_nothing_ran(tmp_path):
    assert "run `dvc repro`" in summary(tmp_path)
    write_json(tmp_path / "train_performance_rnn.json", {"parameters": 1000, "steps": 10, "seconds": 5.0,
               "tokens_per_second": 123.4, "val_nll": 3.0, "unigram_nll": 4.0})
    write_json(tmp_path / "quantize_performance_rnn.json", {"size_ratio": 0.255, "val_nll_fp32": 3.0,
               "val_nll_int8": 3.03, "nll_delta_rel": 0.01, "tokens_per_second_fp32": 1000,
               "tokens_per_second_int8": 2500})
    write_json(tmp_path / "generate_performance_rnn.json", {
        "pieces": 2, "precision": "fp32",
        "fp32": {"pieces": 2, "tokens_per_second": 500.0, "real_time_factor": 20.0},
        "int8": {"pieces": 2, "tokens_per_second": 1500.0, "real_time_factor": 60.0}})
    (tmp_path / "evaluate.md").write_text("# Evaluation\n| a | b |\n")
    text = summary(tmp_path)
    assert "generate performance_rnn fp32: 2 pieces, 500 events/s, 20.0x real time" in text
    assert "generate performance_rnn int8: 2 pieces, 1,500 events/s, 60.0x real time" in text
    assert "train performance_rnn: 1,000 parameters, 10 steps in 5 s" in text
    assert "(25.0% below)" in text
    assert "size x0.255, val_nll 3.0000 -> 3.0300 (+1.00%), 1,000 -> 2,500 tokens/s" in text
    assert text.endswith("# Evaluation\n| a | b |")
