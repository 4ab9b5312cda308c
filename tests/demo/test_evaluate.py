"""`omnitok eval`: word error rate, held-out lines, oracle scores, and the eval end to end on
a tiny random checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from omnitok import OmnitokError
from omnitok.cli import main
from omnitok.demo.contact_sheet import FRAME, LINE_HEIGHT, PAD, Cell, contact_sheet
from omnitok.demo.eval_baselines import (
    distinct_targets,
    judge_warnings,
    make_judges,
    read_image,
    read_speech,
)
from omnitok.demo.eval_data import (
    ALL_THREE,
    by_direction,
    choose_directions,
    direction_key,
    read_heldout,
)
from omnitok.demo.eval_metrics import (
    aggregate,
    judge_image,
    judge_speech,
    judge_text,
    summarise,
    wer,
    word_errors,
)
from omnitok.demo.eval_run import EvalSettings, prepare, shuffled_image_codes
from omnitok.demo.evaluate import eval_command
from omnitok.demo.world import COLOURS, DIRECTIONS, build_world
from omnitok.model.checkpoint import save_checkpoint
from omnitok.model.config import ModelArgs
from omnitok.model.transformer import Transformer
from omnitok.tokenizers.document import AudioSegment, Document, ImageSegment, TextSegment

from ..conftest import tiny_media_bundle

SCORE_KEYS = {"n", "all", "shape", "colour", "background"}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    build_world(out, n_train=1, n_heldout=4, seed=0, progress=False)
    return out


def tiny_checkpoint(folder, text_tokenizer, *, audio: bool = True):
    """Random weights and tokenizers: 16x16 images as 4x4 codes, speech at 10 frames/s."""
    bundle = tiny_media_bundle(text_tokenizer, image_size=16, image_codes=32, audio_codes=16,
                               ratios=(8, 8, 5, 5), audio=audio)
    args = ModelArgs.from_name("debug", vocab_size=bundle.vocab.padded_size, max_seq_len=512)
    return save_checkpoint(folder, Transformer(args).eval(), bundle)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, text_tokenizer):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "any", text_tokenizer)


# ---- word error rate -----------------------------------------------------------------------
@pytest.mark.parametrize("hyp, ref, errors", [
    ("a red circle", "a red circle", 0),
    ("a blue circle", "a red circle", 1),  # one substitution
    ("a circle", "a red circle", 1),  # one deletion
    ("a big red circle", "a red circle", 1),  # one insertion
    ("", "a red circle", 3),  # everything deleted
    ("x y", "", 2),  # everything inserted
    ("red a circle", "a red circle", 2),  # a swap costs two
    ("the cat sat on the mat", "the cat is on a mat", 2),
    ("a red star on a blue", "a red star on a blue background", 1),
    ("kitten sitting", "sitting kitten on", 2),  # drop "sitting", keep "kitten", on -> sitting
])
def test_word_errors_hand_computed(hyp, ref, errors):
    assert word_errors(hyp, ref) == errors


def test_wer_sums_errors_over_reference_words():
    pairs = [("a blue circle", "a red circle"), ("", "on a mat")]
    assert wer(pairs) == pytest.approx(4 / 6)
    assert wer([("a red circle", "a red circle")]) == 0.0
    assert wer([("a b c d", "a")]) == 3.0  # insertions can push WER above 1


# ---- held-out lines ------------------------------------------------------------------------
def test_read_heldout(world):
    items = read_heldout(world / "heldout.jsonl")
    assert len(items) == 4 * 7
    groups = by_direction(items)
    assert set(DIRECTIONS) <= set(groups) and set(groups) - set(DIRECTIONS) <= set(ALL_THREE)
    for direction, its in groups.items():
        assert {it.kind for it in its} == {direction.split("->")[-1]}
        assert {it.split for it in its} <= {"heldout-seen", "heldout-unseen"}
    t2i = groups["text->image"][0]
    assert t2i.prompt == (("text", f"draw: {t2i.caption}"),) and t2i.target[1].is_file()
    assert "[speech: " in groups["audio->image"][0].prompt_text()
    for t2a in groups["text->audio"]:  # spoken word by word in the manifest: whole here
        assert t2a.prompt == (("text", f"say: {t2a.caption}"),)
        assert t2a.target[0] == "audio" and t2a.target[1].suffix == ".wav"
    for it in groups.get("image+text->audio", []):
        assert it.prompt[-1] == ("text", it.caption) and it.prompt[0][0] == "image"
    limited = read_heldout(world / "heldout.jsonl", limit=1)
    assert len(by_direction(limited)["image->text"]) == 2  # one per split
    assert direction_key("image->text->audio") == "image+text->audio"
    assert list(choose_directions(groups, ["image->text"])) == ["image->text"]
    with pytest.raises(OmnitokError, match="no lines of image->text"):
        choose_directions({"text->image": groups["text->image"]}, ["image->text"])


def test_read_heldout_refuses_bad_manifests(tmp_path, world):
    with pytest.raises(OmnitokError, match="cannot read manifest"):
        read_heldout(tmp_path / "missing.jsonl")
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"segments": [{"text": "a"}, {"text": "b"}]}) + "\n")
    with pytest.raises(OmnitokError, match=r"plain.jsonl:1: not a demo-world document"):
        read_heldout(plain)
    line = json.loads((world / "heldout.jsonl").read_text().splitlines()[0])
    line["segments"] = [{"text": "x"}, {"text": "y"}]  # a text target under an image direction
    bad = world / "bad.jsonl"
    bad.write_text(json.dumps(line) + "\n")
    with pytest.raises(OmnitokError, match="last segment is text"):
        read_heldout(bad)
    bad.unlink()


# ---- the judges fed known-correct answers ---------------------------------------------------
def test_oracle_answers_score_100_percent(world):
    items = read_heldout(world / "heldout.jsonl")
    judges = make_judges(["image", "audio"])
    outcomes = []
    for item in items:
        kind, target = item.target
        if kind == "text":
            outcomes.append(judge_text(f" {target}\n", item))
        elif kind == "image":
            outcomes.append(judge_image(read_image(target), item, judges["image"]))
        else:
            outcomes.append(judge_speech(*read_speech(target), item, judges["audio"]))
    assert all(o.correct for o in outcomes), [o for o in outcomes if not o.correct]
    kinds = {d: its[0].kind for d, its in by_direction(items).items()}
    for direction, splits in aggregate(outcomes, kinds).items():
        for s in splits.values():
            assert s["all"] == s["shape"] == s["colour"] == s["background"] == 1.0
            if kinds[direction] == "text":
                assert s["wer"] == 0.0 and s["exact"] == 1.0


def test_wrong_answers_score_what_they_get_right(world):
    items = [it for it in read_heldout(world / "heldout.jsonl") if it.kind == "text"][:1]
    a = items[0].attrs
    other = next(c for c in COLOURS if c not in (a.colour, a.background))
    wrong = f"a {a.colour} {a.shape} on a {other} background"
    s = summarise([judge_text(wrong, items[0])], "text")
    assert (s["all"], s["shape"], s["colour"], s["background"]) == (0.0, 1.0, 1.0, 0.0)
    assert s["wer"] == pytest.approx(1 / 7)
    blank = judge_image(None, items[0], None)  # no image generated: wrong on every attribute
    assert not blank.correct and not any(blank.hits.values())
    flat = np.full((16, 16, 3), 128, np.uint8)  # an image with no shape
    assert not judge_image(flat, items[0], make_judges(["image"])["image"]).correct
    click = np.zeros(16000, np.float32)
    click[8000:8100] = 0.5  # 6 ms of sound: too short to say anything
    assert not judge_speech(click, 16000, items[0], None).correct
    assert not judge_speech(None, 16000, items[0], None).correct


def test_judge_warnings_are_loud():
    good = {"n": 10, "all": 1.0}
    base = {"image": {"heldout-seen": {"truth": good, "roundtrip": good}},
            "audio": {"heldout-seen": {"truth": {"n": 10, "all": 0.9}, "roundtrip": good}}}
    [line] = judge_warnings(base)
    assert line.startswith("WARNING: the speech judge scores 90.0%") and "not a judge" in line


def test_contact_sheet(tmp_path):
    rng = np.random.default_rng(0)
    cells = [Cell(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), "draw: a red star on a "
                  "blue background, a long prompt that wraps", ok) for ok in (True, False, None)]
    path = contact_sheet(cells, tmp_path / "sheet.png", columns=2, size=64, title="t")
    top, cell_h = 12 + 2 * PAD, 64 + 3 * PAD + 4 * LINE_HEIGHT  # title row, one cell
    with Image.open(path) as im:
        assert im.size == (2 * (64 + 2 * PAD), top + 2 * cell_h)
        frames = [im.getpixel((x, y)) for x, y in ((2, top + 30), (72 + 2, top + 30),
                                                   (2, top + cell_h + 30))]
        assert frames == [FRAME[True], FRAME[False], FRAME[None]]  # judged right, wrong, not
        assert im.getpixel((40, top + 40)) == tuple(cells[0].pixels[9, 9])  # 4x nearest


# ---- end to end ----------------------------------------------------------------------------
def test_eval_end_to_end(world, ckpt, tmp_path, capsys):
    out = tmp_path / "eval"
    eval_command(ckpt, data=world / "heldout.jsonl", out=out, batch_size=8,
                 max_text_tokens=12, max_audio_seconds=2.0, sheet=6, quiet=True)
    captured = capsys.readouterr()
    report = json.loads((out / "eval.json").read_text())
    items = read_heldout(world / "heldout.jsonl")
    groups = by_direction(items)
    assert list(report["scores"]) == list(groups)  # every direction of the manifest
    for direction, splits in report["scores"].items():
        kind = direction.split("->")[-1]
        assert set(splits) == {it.split for it in groups[direction]}
        for s in splits.values():
            assert SCORE_KEYS <= set(s) and all(0 <= s[k] <= 1 for k in SCORE_KEYS - {"n"})
            assert ({"wer", "exact"} <= set(s)) == (kind == "text")
    assert sum(s["n"] for d in report["scores"].values() for s in d.values()) == len(items)
    base = report["baselines"]
    assert set(base) == {"text", "image", "audio"}
    for kind in ("image", "audio"):
        n = len(distinct_targets(items, kind))
        assert sum(base[kind][s]["truth"]["n"] for s in ("heldout-seen", "heldout-unseen")) == n
        for split in ("heldout-seen", "heldout-unseen"):
            assert base[kind][split]["truth"]["all"] == 1.0  # the judges read ground truth
            assert 0 <= base[kind][split]["roundtrip"]["all"] <= 1
    assert base["text"]["heldout-seen"]["roundtrip"]["all"] == 1.0
    assert report["warnings"] == [] and report["skipped"] == []
    assert report["settings"]["batch_size"] == 8 and report["seconds"]["total"] > 0
    assert {"prompts", "baselines", "generate text->image", "judge audio->image",
            "total"} <= set(report["seconds"])
    assert report["counts"]["text->image"]["lines"] == len(groups["text->image"])
    assert len(report["items"]) == len(items)
    files = [it["file"] for it in report["items"] if it["file"]]
    assert files and all((out / f).is_file() for f in files)
    with Image.open(out / "contact_sheet.png") as im:
        assert im.size[0] > 0
    table = captured.out
    assert "text->image" in table and "unseen" in table and "round trip" in table
    print(table)


def test_eval_skips_directions_without_a_tokenizer(world, tmp_path, text_tokenizer, capsys):
    ckpt = tiny_checkpoint(tmp_path / "noaudio", text_tokenizer, audio=False)
    out = tmp_path / "eval"
    eval_command(ckpt, data=world / "heldout.jsonl", out=out, limit=1, sheet=0,
                 directions=["text->image", "text->audio", "image->text"],
                 max_text_tokens=4, quiet=True)
    err = capsys.readouterr().err
    assert "note: skipping text->audio: the checkpoint has no audio tokenizer" in err
    report = json.loads((out / "eval.json").read_text())
    assert list(report["scores"]) == ["text->image", "image->text"]
    assert report["skipped"][0]["direction"] == "text->audio"
    assert report["contact_sheet"] is None and not (out / "contact_sheet.png").exists()


def test_eval_warns_when_a_judge_fails_on_ground_truth(world, ckpt, tmp_path, capsys):
    lines = [json.loads(x) for x in (world / "heldout.jsonl").read_text().splitlines()]
    for line in lines:  # every recorded shape wrong: the judge disagrees with the "truth"
        shape = line["attrs"]["shape"]
        line["attrs"]["shape"] = "star" if shape != "star" else "circle"
    lied = world / "lied.jsonl"
    lied.write_text("".join(json.dumps(x) + "\n" for x in lines))
    try:
        eval_command(ckpt, data=lied, out=tmp_path / "eval", limit=1, sheet=0,
                     directions=["text->image"], quiet=True)
    finally:
        lied.unlink()
    out = capsys.readouterr().out
    assert "WARNING: the image judge scores 0.0% on ground-truth heldout-seen image" in out
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert len(report["warnings"]) == 2  # seen and unseen


def test_cli_bad_input_is_one_line(world, ckpt, tmp_path, capsys):
    runs = [
        (["eval", str(ckpt), "--data", str(tmp_path / "missing.jsonl")], "cannot read"),
        (["eval", str(ckpt), "--data", str(world / "heldout.jsonl"), "--directions", "x->y"],
         "unknown direction"),
        (["eval", str(ckpt), "--data", str(world / "heldout.jsonl"), "--limit", "1",
          "--cfg-scale", "3", "--batch-size", "0"], "--batch-size"),
        (["eval", str(tmp_path / "nockpt"), "--data", str(world / "heldout.jsonl")], "nockpt"),
    ]
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"segments": [{"text": "a"}, {"text": "b"}]}) + "\n")
    runs.append((["eval", str(ckpt), "--data", str(plain)], "not a demo-world document"))
    for argv, needle in runs:
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and needle in err[0], (argv, err)


# ---- layout probe ---------------------------------------------------------------------------
def test_shuffled_image_codes_permute_each_image_and_nothing_else():
    audio = AudioSegment(torch.arange(12).reshape(2, 6))
    image = ImageSegment(torch.arange(20).reshape(4, 5))
    doc = Document([TextSegment("write:"), image, audio, ImageSegment(image.codes + 20)])
    a, b = shuffled_image_codes(doc, 3), shuffled_image_codes(doc, 3)
    assert a.segments == b.segments  # seeded
    assert shuffled_image_codes(doc, 4).segments != a.segments
    assert a.segments[0] == doc.segments[0] and a.segments[2] == audio
    for new, old in ((a.segments[1], image), (a.segments[3], doc.segments[3])):
        assert new.codes.shape == old.codes.shape and not torch.equal(new.codes, old.codes)
        assert sorted(new.codes.reshape(-1).tolist()) == sorted(old.codes.reshape(-1).tolist())


def test_eval_shuffles_prompt_images_only_when_asked(world, ckpt, tmp_path, capsys):
    from omnitok.generate.generator import Generator
    from omnitok.model.checkpoint import load_checkpoint

    gen = Generator(load_checkpoint(ckpt))
    items = by_direction(read_heldout(world / "heldout.jsonl"))["image->text"]
    plain = prepare(gen, "image->text", items, EvalSettings())
    probe = prepare(gen, "image->text", items, EvalSettings(shuffle_image_codes=True))
    for p, q, it in zip(plain.docs, probe.docs, items):
        assert p.segments == gen.tokenizers.document(list(it.prompt)).segments
        (ip,), (iq,) = ([s for s in d.segments if isinstance(s, ImageSegment)] for d in (p, q))
        assert not torch.equal(ip.codes, iq.codes)
        assert torch.equal(ip.codes.reshape(-1).sort().values, iq.codes.reshape(-1).sort().values)
    main(["eval", str(ckpt), "--data", str(world / "heldout.jsonl"), "--out", str(tmp_path),
          "--directions", "image->text", "--max-text-tokens", "4", "--shuffle-image-codes",
          "--quiet"])
    assert "prompt image codes shuffled" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval.json").read_text())["settings"]["shuffle_image_codes"]


def test_via_text_applies_to_answers_from_media_alone():
    from omnitok.demo.eval_run import uses_media_reading

    assert uses_media_reading("audio->image") and uses_media_reading("image->audio")
    for direction in ("text->image", "audio+text->image", "image+text->audio", "audio->text",
                      "audio+image->text"):
        assert not uses_media_reading(direction), direction


def test_eval_reads_answers_back_when_asked(world, ckpt, tmp_path, capsys):
    main(["eval", str(ckpt), "--data", str(world / "heldout.jsonl"), "--out", str(tmp_path),
          "--directions", "text->image", "audio->image", "--rerank", "2", "--via-text",
          "--max-text-tokens", "6", "--quiet", "--sheet", "0"])
    assert "best of 2 read back, media->media via text" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["settings"]["rerank"] == 2 and report["settings"]["via_text"]
    items = report["items"]
    assert items and all("read_back" in it["extra"] for it in items)
    assert all(("via" in it["extra"]) == (it["direction"] == "audio->image") for it in items)
    assert main(["eval", str(ckpt), "--data", str(world / "heldout.jsonl"), "--out",
                 str(tmp_path / "bad"), "--rerank", "0"]) == 1
    assert "--rerank must be >= 1" in capsys.readouterr().err


def test_eval_speaks_word_by_word_when_asked(world, ckpt, tmp_path, capsys):
    main(["eval", str(ckpt), "--data", str(world / "heldout.jsonl"), "--out", str(tmp_path),
          "--directions", "text->audio", "image->audio", "image+text->audio",
          "--word-by-word", "--max-word-seconds", "0.05", "--quiet", "--sheet", "0"])
    assert "speech word by word" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["settings"]["word_by_word"] and report["settings"]["max_word_seconds"] == 0.05
    items = {it["direction"]: it for it in report["items"]}
    assert set(items) == {"text->audio", "image->audio", "image+text->audio"}
    from omnitok.model.checkpoint import load_checkpoint

    spec = load_checkpoint(ckpt).tokenizers.vocab.audio
    most = 7 * max(1, round(0.05 * spec.frame_rate)) * spec.sample_rate / spec.frame_rate
    for direction in ("text->audio", "image+text->audio"):  # 7 words, each at most 0.05 s
        assert 0 < sf.info(tmp_path / items[direction]["file"]).frames <= most
    assert items["image->audio"]["file"]  # no text to speak: spoken whole, as without the flag
