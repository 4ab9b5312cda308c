"""`omnitok demo train --quick`: the recipe's plumbing end to end, and a rerun resumes."""

from __future__ import annotations

import json

import pytest

from omnitok import OmnitokError
from omnitok.cli import main
from omnitok.model.checkpoint import load_checkpoint
from omnitok.train.logs import read_log


def test_quick_recipe_writes_every_artefact_and_resumes(tmp_path, capsys):
    out, data = tmp_path / "run", tmp_path / "data"
    argv = ["demo", "train", "--quick", "--out", str(out), "--data", str(data), "--threads", "1"]
    assert main(argv) == 0
    for path in ("tok/text.model", "tok/vocab.json", "tok/image/model.safetensors",
                 "tok/audio/model.safetensors", "shards_image/index.json", "shards/index.json",
                 "val_shards/index.json",
                 "run/metrics.csv",
                 "run/curves.png", "shards_speech/index.json", "speech_run/metrics.csv",
                 "draw_run/metrics.csv", "draw_run/last/reader/model.safetensors",
                 "draw_run/last/speech_reader/model.safetensors", "eval/eval.json",
                 "eval/contact_sheet.png"):
        assert (out / path).exists(), path
    speech_rows = read_log(out / "speech_run" / "metrics.csv")
    assert speech_rows[-1]["step"] == 4 and speech_rows[-1]["val_loss"] > 0
    draw = json.loads((out / "draw_run" / "train.json").read_text())
    assert draw["train"]["init"] == str(out / "speech_run" / "last")
    assert read_log(out / "draw_run" / "metrics.csv")[-1]["step"] == 4
    report = json.loads((out / "eval" / "eval.json").read_text())
    assert report["checkpoint"] == str(out / "draw_run" / "last")
    assert report["settings"]["word_by_word"]
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


def test_split_manifest_keeps_every_image_line_and_a_seeded_share_of_the_rest(tmp_path):
    from omnitok.demo.recipe import IMAGE_DIRECTIONS, split_manifest

    directions = ["image->text", "text->image", "audio->text", "text->audio", "audio->image",
                  "image->audio", "audio->image->text"]
    lines = [json.dumps({"segments": [{"text": f"s{i}"}], "direction": d}) + "\n"
             for i in range(40) for d in directions]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(lines) + "\n")  # a blank last line is skipped
    image, other = tmp_path / "image.jsonl", tmp_path / "other.jsonl"
    assert split_manifest(manifest, image, other, 0.25, seed=3) == (80, 50)
    image_lines = image.read_text().splitlines(keepends=True)
    assert image_lines == [x for x in lines if json.loads(x)["direction"] in IMAGE_DIRECTIONS]
    kept = other.read_text().splitlines(keepends=True)
    rest = [x for x in lines if json.loads(x)["direction"] not in IMAGE_DIRECTIONS]
    assert len(set(kept)) == 50 and set(kept) <= set(rest)
    assert kept == sorted(kept, key=rest.index)  # in the manifest's order
    split_manifest(manifest, image, tmp_path / "again.jsonl", 0.25, seed=3)
    assert (tmp_path / "again.jsonl").read_text() == other.read_text()
    split_manifest(manifest, image, tmp_path / "seed4.jsonl", 0.25, seed=4)
    assert (tmp_path / "seed4.jsonl").read_text() != other.read_text()
    manifest.write_text(lines[0] + "not json\n")
    with pytest.raises(OmnitokError, match=r"train.jsonl:2: not JSON"):
        split_manifest(manifest, image, other, 0.25, seed=3)
    assert other.read_text() == (tmp_path / "again.jsonl").read_text()  # left as it was


def test_speech_manifest_keeps_the_first_samples_speech_and_a_share_of_the_rest(tmp_path):
    from omnitok.demo.recipe import speech_manifest

    directions = ["image->text", "text->image", "audio->text", "text->audio", "audio->image",
                  "image->audio", "audio->image->text"]
    lines = [json.dumps({"segments": [{"text": f"s{i}"}], "direction": d,
                         "sample": f"train-{i:06d}"}) + "\n"
             for i in range(40) for d in directions]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(lines))
    out = tmp_path / "speech.jsonl"
    assert speech_manifest(manifest, out, 30, 0.5, seed=3) == (30, 90)
    kept = out.read_text().splitlines(keepends=True)
    first = lines[:30 * 7]
    assert kept == sorted(kept, key=first.index) and len(set(kept)) == 120  # in order
    assert [x for x in kept if '"text->audio"' in x] == [x for x in first if '"text->audio"' in x]
    speech_manifest(manifest, tmp_path / "again.jsonl", 30, 0.5, seed=3)
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()
    speech_manifest(manifest, tmp_path / "seed4.jsonl", 30, 0.5, seed=4)
    assert (tmp_path / "seed4.jsonl").read_text() != out.read_text()
    manifest.write_text(lines[0] + json.dumps({"segments": [{"text": "x"}]}) + "\n")
    with pytest.raises(OmnitokError, match=r"train.jsonl:2: not a demo-world line"):
        speech_manifest(manifest, out, 30, 0.5, seed=3)
    assert out.read_text() == (tmp_path / "again.jsonl").read_text()  # left as it was


@pytest.mark.parametrize("fraction", ["0", "1.5", "-0.1"])
def test_other_fraction_out_of_range_is_a_one_line_error(tmp_path, capsys, fraction):
    argv = ["demo", "train", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "data"),
            "--other-fraction", fraction, "--stages", "eval"]
    assert main(argv) == 1
    assert "--other-fraction" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
