"""`omnitok data demo` and the ground-truth judge check."""

from __future__ import annotations

import json

import pytest

from omnitok import OmnitokError
from omnitok.cli import main
from omnitok.demo.commands import judge_demo_data, manifest_media


def test_cli_builds_and_judges(capsys, tmp_path):
    out = tmp_path / "demo"
    code = main(["data", "demo", "--out", str(out), "--n-train", "6", "--n-heldout", "4"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "6 train + 4 held-out samples" in stdout and "train.jsonl (42 documents)" in stdout
    judge_demo_data(data=out / "heldout.jsonl", out=tmp_path / "scores.json")
    table = capsys.readouterr().out
    assert "image/heldout-unseen" in table and "audio/heldout-seen" in table
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert {s["all"] for s in scores.values()} == {1.0}
    assert sum(s["n"] for s in scores.values()) == 2 * 4


def test_cli_bad_input_is_one_line(capsys, tmp_path):
    code = main(["data", "demo", "--out", str(tmp_path / "x"), "--n-train", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "n_train" in err[0]


def test_manifest_media_refuses_bad_manifests(tmp_path):
    bad = tmp_path / "bad.jsonl"
    doc = {"segments": [{"image": "../x.png"}], "attrs": {"shape": "star", "colour": "red",
                                                          "background": "blue"}}
    bad.write_text(json.dumps(doc) + "\n")
    with pytest.raises(OmnitokError, match="escapes"):
        manifest_media(bad)
    bad.write_text(json.dumps({"segments": [], "attrs": {"shape": "blob"}}) + "\n")
    with pytest.raises(OmnitokError, match="bad.jsonl:1"):
        manifest_media(bad)
    with pytest.raises(OmnitokError, match="no such file"):
        manifest_media(tmp_path / "missing.jsonl")
