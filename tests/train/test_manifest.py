"""The corpus manifest reader: good lines parse, every kind of bad line is counted and skipped."""

from __future__ import annotations

import json

import pytest

from omnitok.train.manifest import ManifestError, media_files, read_manifest


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"x")
    (tmp_path / "b.wav").write_bytes(b"x")
    (tmp_path.parent / "outside.png").write_bytes(b"x")
    lines = [
        json.dumps({"segments": [{"text": "hi"}, {"image": "img/a.png"}], "id": 7}),
        json.dumps([{"audio": "b.wav"}, {"text": "say"}]),
        "",
        "{not json",
        json.dumps({"segments": [{"image": "../outside.png"}]}),
        json.dumps({"segments": [{"image": "/etc/passwd"}]}),
        json.dumps({"segments": [{"image": "img/missing.png"}]}),
        json.dumps({"segments": [{"text": 5}]}),
        json.dumps({"segments": [{"video": "x.mp4"}]}),
        json.dumps({"segments": []}),
    ]
    path = tmp_path / "m.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe\n")
    return path


def test_good_and_bad_lines(corpus):
    docs, stats = read_manifest(corpus)
    assert [d.line for d in docs] == [1, 2]
    assert docs[0].meta == {"id": 7} and docs[0].segments[0].value == "hi"
    assert docs[0].media("image") == [corpus.parent.resolve() / "img" / "a.png"]
    assert [s.kind for s in docs[1].segments] == ["audio", "text"]
    assert stats.documents == 2 and stats.n_skipped == 8
    assert stats.skipped["path escapes the manifest folder"] == 1
    assert stats.skipped["missing file"] == 1 and stats.skipped["bad JSON"] == 1
    assert stats.skipped["not UTF-8"] == 1 and stats.skipped["bad path"] == 1
    assert "2 documents, 8 skipped" in stats.summary()


def test_strict_mode_names_the_line(corpus):
    with pytest.raises(ManifestError, match=r"m.jsonl:4: bad JSON"):
        read_manifest(corpus, strict=True)


def test_media_files(corpus, tmp_path):
    files, stats = media_files([corpus], "image", (".png",))
    img = tmp_path.resolve() / "img"
    assert files == [img / "a.png", img / "missing.png"]  # existence is the decoder's check
    assert stats.n_skipped == 7
    files, _ = media_files([tmp_path / "img"], "image", (".png",))
    assert [f.name for f in files] == ["a.png"]
    with pytest.raises(ManifestError, match="no such manifest"):
        media_files([tmp_path / "nope.jsonl"], "image", (".png",))


def test_audio_spans(tmp_path):
    (tmp_path / "b.wav").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"x")
    good = [[{"text": "a"}, {"audio": "b.wav", "to": 0.25}, {"text": "red"},
             {"audio": "b.wav", "from": 0.25, "to": 1}, {"audio": "b.wav", "from": 1}],
            [{"from": 0.5, "audio": "b.wav"}]]
    bad = {"bad span": [{"audio": "b.wav", "from": -1}, {"audio": "b.wav", "to": "1"},
                        {"audio": "b.wav", "from": 1, "to": 0.5},
                        {"audio": "b.wav", "from": True}],
           "bad segment": [{"image": "a.png", "from": 0}, {"text": "x", "to": 1},
                           {"audio": "b.wav", "until": 1},
                           {"audio": "b.wav", "text": "x"}]}
    lines = [json.dumps({"segments": s}) for s in good]
    lines += [json.dumps({"segments": [s]}) for segs in bad.values() for s in segs]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    docs, stats = read_manifest(path)
    assert [s.span for s in docs[0].segments] == [None, (0.0, 0.25), None, (0.25, 1.0),
                                                  (1.0, None)]
    assert docs[1].segments[0].span == (0.5, None) and docs[1].segments[0].kind == "audio"
    assert dict(stats.skipped) == {reason: len(segs) for reason, segs in bad.items()}
    with pytest.raises(ManifestError, match=r"m.jsonl:3: bad span: from must be seconds >= 0"):
        read_manifest(path, strict=True)
    path.write_text(lines[4] + "\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:1: bad span: to \(0.5\) must be after"):
        read_manifest(path, strict=True)
