"""`omnitok data probe`: its readers on code grids whose answer is known (a bar's orientation
is in the layout only; two codes with one codebook vector are the same outline), and the CLI
on a small world."""

from __future__ import annotations

import json

import pytest
import torch

from omnitok import OmnitokError
from omnitok.cli import main
from omnitok.demo.code_probe import CodeSet, fit_reader, make_reader, manifest_images, score_reader
from omnitok.demo.world import build_world

from ..conftest import tiny_media_bundle


def bars(n: int, code: int, seed: int, unseen: bool = False) -> CodeSet:
    """6x6 grids of code 0 with one 3-long bar of `code`: label 0 horizontal, 1 vertical."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.zeros(n, 6, 6, dtype=torch.long)
    labels = torch.randint(0, 2, (n,), generator=g)
    for i in range(n):
        r, c = torch.randint(0, 4, (2,), generator=g).tolist()
        if labels[i]:
            grids[i, r:r + 3, c] = code
        else:
            grids[i, r, c:c + 3] = code
    return CodeSet(grids, {"shape": labels}, torch.full((n,), unseen))


@pytest.fixture
def codebook():
    book = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    book[2] = book[1]  # code 2: another colour of code 1's outline
    return book


def test_layout_is_read_by_the_cnns_not_the_bag(codebook, one_thread):
    heads = {"shape": 2}
    train = bars(512, 1, seed=0)
    seen, unseen = bars(200, 1, seed=1), bars(200, 2, seed=2, unseen=True)
    test = CodeSet(torch.cat([seen.codes, unseen.codes]),
                   {"shape": torch.cat([seen.labels["shape"], unseen.labels["shape"]])},
                   torch.cat([seen.unseen, unseen.unseen]))
    scores = {}
    for kind in ("bag", "cnn", "cnn-codebook"):
        torch.manual_seed(0)
        reader = fit_reader(make_reader(kind, codebook, 2), train, heads, epochs=8)
        scores[kind] = score_reader(reader, test, heads)
    assert scores["bag"]["seen"]["shape"] < 0.7  # the same counts either way: chance
    assert scores["cnn"]["seen"]["shape"] > 0.95
    assert scores["cnn-codebook"]["seen"]["shape"] > 0.95
    assert scores["cnn-codebook"]["unseen"]["shape"] > 0.95  # code 2 never seen in training


def test_cli_on_a_small_world(tmp_path, text_tokenizer, capsys, one_thread):
    world = tmp_path / "world"
    build_world(world, n_train=8, n_heldout=4, seed=0, progress=False)
    tok = tmp_path / "tok"
    tiny_media_bundle(text_tokenizer, audio=False).save(tok)
    out = tmp_path / "probe.json"
    assert main(["data", "probe", "--tokenizer", str(tok), "--train",
                 str(world / "train.jsonl"), "--heldout", str(world / "heldout.jsonl"),
                 "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "trained on 8 images" in table and "cnn-codebook" in table
    scores = json.loads(out.read_text())
    assert set(scores) == {"bag", "cnn", "cnn-codebook"}
    for splits in scores.values():
        assert set(splits) == {"seen", "unseen"}
        assert all(0 <= v <= 1 for s in splits.values() for v in s.values())


def test_bad_manifests(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(OmnitokError, match="bad.jsonl:1"):
        manifest_images(bad, 0)
    bad.write_text(json.dumps({"segments": [{"text": "hi"}], "sample": "s", "attrs": {}}) + "\n")
    with pytest.raises(OmnitokError, match="no line with an image"):
        manifest_images(bad, 0)
    assert main(["data", "probe", "--train", str(tmp_path / "missing.jsonl")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read" in err[0]
