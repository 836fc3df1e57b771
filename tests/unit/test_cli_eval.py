"""`raw-rm eval` end to end on a tiny random model and a small JSONL file; its argument errors."""

from __future__ import annotations

import json

import pytest

from raw_rm.cli import main


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from raw_rm.config import ModelConfig
    from raw_rm.models import build_model, save_model

    model, tokenizer = build_model(ModelConfig(backbone="tiny-bert"))
    return save_model(model, tokenizer, tmp_path_factory.mktemp("tiny") / "model")


def write_pairs(path, n, tag):
    with open(path, "w") as f:
        for i in range(n):
            row = {"prompt": f"{tag} question {i}?", "chosen": f"A helpful answer {i}.", "rejected": f"No {i}."}
            f.write(json.dumps(row) + "\n")
    return str(path)


def test_eval_prints_the_table_and_writes_the_report(tiny_model_dir, tmp_path, capsys):
    data = write_pairs(tmp_path / "test.jsonl", 24, "in")
    ood = write_pairs(tmp_path / "ood.jsonl", 8, "out")
    out = tmp_path / "report"
    code = main(
        [
            "eval",
            "--model",
            str(tiny_model_dir),
            "--data",
            data,
            "--ood",
            f"shift={ood}",
            "--out",
            str(out),
            "--n-boot",
            "20",
            "--val-fraction",
            "0.3",
            "--max-pairs",
            "20",
            "data.max_len_tokens=32",
        ]
    )
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    n_test = metrics["sets"]["test"]["n_pairs"]
    assert 0 < n_test < 20 and metrics["sets"]["shift"]["n_pairs"] == 8  # 20 of 24 sampled, then split
    assert "evaluating a random sample of 20 of 24 pairs (--max-pairs, seed 0)" in captured.err
    assert f"accuracy on 'test' ({n_test} pairs, 95% CI)" in printed
    assert "robustness gap 'shift' (OOD accuracy)" in printed
    assert "worst probe" in printed and "ECE before → after T" in printed
    assert f"report: {out / 'index.html'}" in printed
    assert (out / "reliability.png").is_file()
    source, k = metrics["model"]["temperature_source"], 20 - n_test  # T adopted, or rejected with the reason
    assert source == f"{k} validation pairs, cross-fitted" or f"fitted on {k} pairs rejected (held-out NLL" in source


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ood", "test=x.jsonl"], "raw-rm eval: error: --ood test=...: 'test' is the name of --data (see --name)"),
        (["--ood", "broken"], "raw-rm eval: error: --ood 'broken': expected NAME=FILE"),
        (["--val-fraction", "1.5"], "raw-rm eval: error: --val-fraction: expected 0 <= value < 1, got 1.5"),
    ],
)
def test_eval_argument_errors(tiny_model_dir, tmp_path, capsys, extra, message):
    data = write_pairs(tmp_path / "d.jsonl", 4, "q")
    assert main(["eval", "--model", str(tiny_model_dir), "--data", data, *extra]) == 2
    assert capsys.readouterr().err.strip() == message


def test_save_temperature_refuses_a_registry_uri(tmp_path, capsys):
    data = write_pairs(tmp_path / "d.jsonl", 4, "q")
    assert main(["eval", "--model", "models:/rm@champion", "--data", data, "--save-temperature"]) == 2
    assert capsys.readouterr().err.strip() == (
        "raw-rm eval: error: --save-temperature needs a local model folder, not a registry URI: evaluate the "
        "folder, then register it (the registry keeps versions immutable)"
    )
