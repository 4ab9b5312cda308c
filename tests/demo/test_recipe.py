"""`omnitok demo train --quick`: the recipe's plumbing end to end, and a rerun resumes."""

from __future__ import annotations

import json

from omnitok.cli import main
from omnitok.model.checkpoint import load_checkpoint
from omnitok.train.logs import read_log


def test_quick_recipe_writes_every_artefact_and_resumes(tmp_path, capsys):
    out, data = tmp_path / "run", tmp_path / "data"
    argv = ["demo", "train", "--quick", "--out", str(out), "--data", str(data), "--threads", "1"]
    assert main(argv) == 0
    for path in ("tok/text.model", "tok/vocab.json", "tok/image/model.safetensors",
                 "tok/audio/model.safetensors", "shards/index.json", "val_shards/index.json",
                 "run/metrics.csv",
                 "run/curves.png", "eval/eval.json", "eval/contact_sheet.png"):
        assert (out / path).exists(), path
    rows = read_log(out / "run" / "metrics.csv")
    assert rows[-1]["val_loss"] > 0  # the held-out loss at the last step
    ckpt = load_checkpoint(out / "run" / "last")
    assert ckpt.tokenizers.image is not None and ckpt.tokenizers.audio is not None
    scores = json.loads((out / "eval" / "eval.json").read_text())
    assert scores  # every direction scored (the eval's own tests check the fields)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "tok").rglob("*") if p.is_file()}
    before = json.loads((out / "recipe.json").read_text())["stages"]
    capsys.readouterr()
    assert main(argv + ["--stages", "text", "image", "audio", "tokenize"]) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "tok").rglob("*") if p.is_file()}
    after = json.loads((out / "recipe.json").read_text())["stages"]
    # the skipped rerun keeps the time the stage took when it did the work
    assert after["image"]["total_seconds"] >= before["image"]["total_seconds"] \
        > after["image"]["seconds"]
    assert after["train"] == before["train"]
    assert main(["demo", "train", "--stages", "nope"]) == 1
