"""The shapes-and-speech world: attributes, rendering, splits, documents, and the builder."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from omnitok import OmnitokError
from omnitok.demo.world import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    Attrs,
    Jitter,
    WorldError,
    all_combos,
    build_world,
    choose_unseen,
    documents,
    make_sample,
    parse_caption,
    read_onsets,
    render,
    spoken_words,
)

N_TRAIN, N_HELDOUT = 24, 8


def test_attributes_and_captions():
    a = Attrs("star", "red", "blue")
    assert a.caption == "a red star on a blue background"
    assert parse_caption(a.caption) == a and parse_caption(" A red star on a blue background.")
    for bad in ("a red star on a red background", "a red blob on a blue background", "red"):
        assert parse_caption(bad) is None
    assert len(all_combos()) == len(SHAPES) * len(COLOURS) * (len(COLOURS) - 1)


@pytest.mark.parametrize("args, message", [
    (("blob", "red", "blue"), "unknown shape"),
    (("star", "teal", "blue"), "unknown colour"),
    (("star", "red", "red"), "both red"),
])
def test_bad_attributes(args, message):
    with pytest.raises(WorldError, match=message) as e:
        render(*args)
    assert isinstance(e.value, OmnitokError)


def test_render_colours_and_jitter():
    im = render("square", "yellow", "purple", size=48, jitter=Jitter(0.1, -0.05, 0.3, 5.0))
    assert im.size == (48, 48) and im.mode == "RGB"
    x = np.asarray(im)
    assert tuple(x[0, 0]) == COLOURS["purple"]
    assert tuple(x[int(48 * 0.45), int(48 * 0.6)]) == COLOURS["yellow"]  # the moved centre
    rng = np.random.default_rng(0)
    for _ in range(200):  # the shape always stays inside the frame
        j = Jitter.sample(rng)
        assert abs(j.dx) + j.scale < 0.5 and abs(j.dy) + j.scale < 0.5


def test_unseen_combinations_keep_every_value_and_pair_in_training():
    unseen = choose_unseen(0)
    assert unseen == choose_unseen(0) and unseen != choose_unseen(1)
    for field in ("shape", "colour", "background"):
        assert set(Counter(getattr(a, field) for a in unseen).values()) == {6}
    for f, g in (("shape", "colour"), ("shape", "background"), ("colour", "background")):
        assert max(Counter((getattr(a, f), getattr(a, g)) for a in unseen).values()) == 1


def test_documents_every_direction_target_last():
    sample = make_sample(0, "heldout", 3, choose_unseen(0))
    assert sample == make_sample(0, "heldout", 3, choose_unseen(0))
    onsets = (0.0, 0.1, 0.4, 0.8, 0.9, 1.0, 1.3)
    docs = documents(sample, 0, onsets)
    assert [d["direction"] for d in docs[:6]] == list(DIRECTIONS)
    assert sorted(docs[6]["direction"].split("->")) == ["audio", "image", "text"]
    for d in docs:
        target = d["direction"].split("->")[-1]
        assert target in d["segments"][-1]
        assert d["attrs"] == {"shape": sample.attrs.shape, "colour": sample.attrs.colour,
                              "background": sample.attrs.background}
    audio = sample.audio
    words = [{"text": "say:"}]
    for k, word in enumerate(sample.attrs.caption.split()):
        span = {"from": onsets[k]} if k else {}
        words += [{"text": word}, {"audio": audio, **span,
                                   **({"to": onsets[k + 1]} if k < 6 else {})}]
    assert docs[2]["segments"] == words  # text->audio: spoken word by word
    assert docs[3]["segments"] == [{"text": "write:"}, {"audio": audio},
                                   {"text": sample.attrs.caption}]
    assert docs[4]["segments"][1] == {"audio": audio}  # "draw:" + speech stays whole
    assert docs[1]["segments"][-1] == {"text": sample.attrs.caption}
    assert sample.split == "heldout-unseen" and sample.attrs in choose_unseen(0)


@pytest.mark.parametrize("order", [("image", "text", "audio"), ("text", "audio", "image"),
                                   ("audio", "text", "image")])
def test_spoken_words_where_speech_follows_its_text(order):
    media = {"image": {"image": "i.png"}, "text": {"text": "a red star"},
             "audio": {"audio": "a.wav"}}
    segments = [media[m] for m in order]
    got = spoken_words(segments, (0.0, 0.2, 0.5))
    if "text->audio" not in "->".join(order):
        assert got == segments
        return
    start = order.index("text")
    words = [{"text": "a"}, {"audio": "a.wav", "to": 0.2}, {"text": "red"},
             {"audio": "a.wav", "from": 0.2, "to": 0.5}, {"text": "star"},
             {"audio": "a.wav", "from": 0.5}]
    assert got == segments[:start] + words + segments[start + 2:]
    with pytest.raises(WorldError, match="2 word onsets for the 3 words of 'a red star'"):
        spoken_words(segments, (0.0, 0.2))


def test_word_onsets_are_recorded_beside_each_clip(world):
    sample = make_sample(0, "train", 1, choose_unseen(0))
    onsets = read_onsets(world, sample)
    wav, rate = sf.read(world / sample.audio)
    assert len(onsets) == 7 and list(onsets) == sorted(onsets) and onsets[0] < 0.05
    assert onsets[-1] < len(wav) / rate - 0.2  # "background" takes a while
    [doc] = [d for d in read(world / "train.jsonl")
             if d["sample"] == sample.name and d["direction"] == "text->audio"]
    assert [s["to"] for s in doc["segments"] if "to" in s] == list(onsets[1:])
    (world / sample.words).write_text('{"words": ["a"], "onsets": [0]}')
    try:
        with pytest.raises(WorldError, match="train-000001.words.json: its words are not"):
            build(world)
    finally:
        (world / sample.words).unlink()
        build(world)  # written again from the clip's arguments
    assert read_onsets(world, sample) == onsets


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def build(out: Path, **kw) -> object:
    args = {"n_train": N_TRAIN, "n_heldout": N_HELDOUT, "progress": False, **kw}
    return build_world(out, **args)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "demo"
    info = build(out)
    assert info.made == N_TRAIN + N_HELDOUT
    return out


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_manifests_are_valid(world):
    world_json = json.loads((world / "world.json").read_text())
    unseen = {Attrs(**a) for a in world_json["unseen"]}
    train, heldout = read(world / "train.jsonl"), read(world / "heldout.jsonl")
    assert len(train) == 7 * N_TRAIN and len(heldout) == 7 * N_HELDOUT
    for docs in (train, heldout):
        assert {d["direction"] for d in docs} >= set(DIRECTIONS)
        for d in docs:
            for seg in d["segments"]:
                for key in ("image", "audio"):
                    if key in seg:
                        assert not Path(seg[key]).is_absolute() and ".." not in seg[key]
                        assert (world / seg[key]).is_file()
    assert all(Attrs(**d["attrs"]) not in unseen for d in train)
    splits = Counter(d["split"] for d in heldout)
    assert splits == {"heldout-seen": 7 * N_HELDOUT // 2, "heldout-unseen": 7 * N_HELDOUT // 2}
    for d in heldout:
        assert (Attrs(**d["attrs"]) in unseen) == (d["split"] == "heldout-unseen")


def test_media_formats(world):
    with Image.open(world / "images" / "train-000000.png") as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    info = sf.info(world / "audio" / "heldout-000001.wav")
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert 1.0 < info.duration < 3.5


def test_deterministic_and_resumable(world, tmp_path):
    want = files(world)
    again = tmp_path / "again"
    build(again)
    assert files(again) == want  # same seed -> the same bytes
    (again / "images" / "train-000005.png").unlink()
    (again / "audio" / "heldout-000002.wav").unlink()
    (again / "train.jsonl").unlink()
    (again / "audio" / ".train-000001.wav.x.tmp").write_bytes(b"crash leftovers")
    info = build(again)
    assert info.made == 2 and files(again) == want
    smaller = build(again, n_train=N_TRAIN - 4)  # fewer samples: their media go too
    assert smaller.made == 0 and not (again / "images" / f"train-{N_TRAIN - 1:06d}.png").exists()
    assert len(read(again / "train.jsonl")) == 7 * (N_TRAIN - 4)


def test_other_seed_differs(world, tmp_path):
    other = files(build(tmp_path / "s1", seed=1, n_train=4, n_heldout=2).out)
    assert other["images/train-000000.png"] != files(world)["images/train-000000.png"]


def test_refuses_foreign_or_mismatched_folders(world, tmp_path):
    with pytest.raises(WorldError, match="seed=0, size=64"):
        build(world, size=32)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(WorldError, match="not a demo world"):
        build(tmp_path / "mine")
    with pytest.raises(WorldError, match="n_train"):
        build(tmp_path / "x", n_train=0)


@pytest.mark.slow
def test_workers_give_the_same_bytes(world, tmp_path):
    build(tmp_path / "w2", workers=2)
    assert files(tmp_path / "w2") == files(world)
