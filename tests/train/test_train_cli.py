"""`omnitok train` end to end on a generated corpus: the loss of every modality falls,
checkpoints load, a stopped or killed run resumes on the same curve, --init and --freeze,
and bad input gives one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from omnitok.cli import main
from omnitok.model.checkpoint import load_checkpoint, save_checkpoint
from omnitok.model.config import ModelArgs
from omnitok.model.image_positions import image_positions_for
from omnitok.model.transformer import Transformer
from omnitok.tokenizers.bundle import TokenizerBundle
from omnitok.tokenizers.document import Document, ImageSegment
from omnitok.tokenizers.vocab import Vocab
from omnitok.train.encode import token_document
from omnitok.train.logs import read_log
from omnitok.train.packing import PackedDataset
from omnitok.train.shards import TokenShards, write_shards


def test_loss_of_every_modality_falls(train_data, tmp_path, capsys, train_argv):
    out = tmp_path / "run"
    assert main(train_argv(train_data, out, "--log-every", "5", steps=30)) == 0
    rows = read_log(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 5, 10, 15, 20, 25, 30]
    first, last = rows[0], rows[-1]
    for g in ("text", "image", "audio"):
        assert last[f"loss_{g}"] < first[f"loss_{g}"] - 0.5, (g, first, last)
    assert last["loss"] < first["loss"] - 0.5
    assert (out / "curves.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "loss" in printed and "text" in printed and str(out / "last") in printed


def test_checkpoint_loads_with_load_checkpoint(baseline):
    ckpt = load_checkpoint(baseline / "last")
    assert ckpt.path.resolve().name == "step-00000012"
    assert sorted(p.name for p in (baseline / "checkpoints").iterdir()) == [
        "step-00000010", "step-00000012"]  # --keep-checkpoints 2
    state = json.loads((baseline / "last" / "trainer.json").read_text())
    assert state["step"] == 12 and set(state["data"]) == {"epoch", "row"}
    optimizer = torch.load(baseline / "last" / "optimizer.pt", weights_only=True)
    assert optimizer["scheduler"]["last_epoch"] == 12
    ids = torch.tensor([[1, 2, 3]])
    assert ckpt.model(ids).shape == (1, 3, ckpt.model.args.vocab_size)


def test_stop_and_resume_gives_the_same_losses(train_data, baseline, tmp_path, train_argv,
                                               losses):
    out = tmp_path / "run"
    assert main(train_argv(train_data, out, steps=7)) == 0  # checkpoints at 5 and 7
    assert main(train_argv(train_data, out, "--resume")) == 0
    assert losses(out) == losses(baseline)
    assert len(losses(out)) == 12


def test_sigkill_and_resume_gives_the_same_losses(train_data, baseline, tmp_path, train_argv,
                                                  losses):
    out = tmp_path / "run"
    argv = train_argv(train_data, out, steps=100000)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "omnitok.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "step-00000010").is_dir():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert max(losses(out)) >= 10
    assert main(train_argv(train_data, out, "--resume")) == 0
    assert losses(out) == losses(baseline)


def test_init_and_freeze_text(train_data, baseline, tmp_path, train_argv):
    out = tmp_path / "tuned"
    assert main(train_argv(train_data, out, "--init", str(baseline / "last"), "--freeze", "text",
                           steps=3)) == 0
    before, after = load_checkpoint(baseline / "last").model, load_checkpoint(out / "last").model
    text = load_checkpoint(out / "last").vocab.range("text")
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values()):
        if name in ("tok_embeddings.weight", "output.weight"):
            assert torch.equal(a[text.start:text.stop], b[text.start:text.stop])
            assert not torch.equal(a, b)
        else:
            assert torch.equal(a, b), name


def test_image_positions_start_at_zero_and_train(train_data, baseline, tok, tmp_path,
                                                 train_argv, losses, capsys):
    """--init adds row/column embeddings (and the local image reader) at zero: the first
    step's loss is the plain init's; then they train. A fresh model gets the shards' layout;
    the reader copies the image tokenizer's codebook, and needs one."""
    runs = {}
    for name, extra in (("plain", ()), ("grid", ("--image-positions",)),
                        ("near", ("--image-neighbours", "--tokenizer", str(tok))),
                        ("cnn", ("--image-neighbours", "--image-summary", "cnn",
                                 "--tokenizer", str(tok)))):
        runs[name] = tmp_path / name
        assert main(train_argv(train_data, runs[name], "--init", str(baseline / "last"),
                               *extra, steps=3)) == 0
    plain, grid, near = losses(runs["plain"]), losses(runs["grid"]), losses(runs["near"])
    assert plain[1] == grid[1] == near[1] and plain[3] != grid[3] != near[3]
    cnn = load_checkpoint(runs["cnn"] / "last").model
    assert losses(runs["cnn"])[1] == plain[1] and cnn.args.image_neighbours.summary == "cnn"
    assert cnn.image_summary.weight.abs().sum() > 0  # the convolutional summary trains
    err = one_line_error(train_argv(train_data, tmp_path / "other", "--init",
                                    str(runs["near"] / "last"), "--image-neighbours",
                                    "--image-summary", "cnn"), capsys)
    assert "image reader has the 'pool' summary, not --image-summary 'cnn'" in err
    ckpt = load_checkpoint(runs["grid"] / "last")
    assert ckpt.model.args.image_positions == image_positions_for(ckpt.vocab)
    assert not ckpt.model.args.image_neighbours
    assert ckpt.model.image_rows.weight[1:].abs().sum() > 0
    assert ckpt.model.image_rows.weight[0].eq(0).all()
    near = load_checkpoint(runs["near"] / "last").model
    assert near.args.image_neighbours is not None and near.args.image_positions is not None
    assert near.image_neighbours[2].weight.abs().sum() > 0
    book = TokenizerBundle.load(tok).image.codebook
    torch.testing.assert_close(near.image_codebook, book, rtol=0, atol=0)
    err = one_line_error(train_argv(train_data, tmp_path / "bare", "--init",
                                    str(baseline / "last"), "--image-neighbours"), capsys)
    assert "--image-neighbours reads the image tokenizer's codebook" in err
    fresh = tmp_path / "fresh"
    assert main(train_argv(train_data, fresh, "--image-positions", steps=2)) == 0
    assert load_checkpoint(fresh / "last").model.args.image_positions == \
        image_positions_for(ckpt.vocab)


def test_bf16_and_accumulation(train_data, tmp_path, train_argv):
    out = tmp_path / "bf16"
    assert main(train_argv(train_data, out, "--precision", "bf16", "--accumulate", "2",
                           "--activation-checkpointing", steps=4, batch=2)) == 0
    rows = read_log(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert rows[-1]["tokens"] > 4 * 2 * 2 * 100  # 2 micro-batches of 2 rows per step


def one_line_error(argv, capsys) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("omnitok: error: ") and "\n" not in err, err
    return err


def test_bad_input_gives_one_line_errors(train_data, baseline, tmp_path, capsys, train_argv):
    assert "no such shard folder" in one_line_error(train_argv(tmp_path / "nope", tmp_path / "a"),
                                                    capsys)
    err = one_line_error(train_argv(train_data, tmp_path / "b", "--init", str(baseline / "last"),
                                    "--model", "tiny"), capsys)  # the last --model wins
    assert "is not a 'tiny' model" in err
    assert "already holds a run" in one_line_error(train_argv(train_data, baseline), capsys)
    err = one_line_error(train_argv(train_data, baseline, "--resume", batch=2), capsys)
    assert "batch_size=4" in err
    err = one_line_error(train_argv(train_data, tmp_path / "c", "--init", str(tmp_path)), capsys)
    assert "config.json" in err
    other = Vocab(text_size=10)
    net = Transformer(ModelArgs.from_name("debug", vocab_size=other.padded_size))
    save_checkpoint(tmp_path / "other", net, TokenizerBundle(other))
    err = one_line_error(train_argv(train_data, tmp_path / "e", "--init", str(tmp_path / "other")),
                         capsys)
    assert "is not the one the shards were made with" in err
    err = one_line_error(train_argv(train_data, tmp_path / "d", "--freeze", "text", "backbone",
                                    "embeddings"), capsys)
    assert "leaves no weight" in err
    err = one_line_error(train_argv(train_data, baseline, "--resume"), capsys)
    assert "already trained 12 steps" in err


def test_held_out_loss_matches_the_checkpoint_and_leaves_training_alone(
        generated, codec, baseline, tmp_path, capsys, train_argv, losses):
    """--val-data: val_loss at every --val-every steps and at the last one, equal to the
    checkpoint's mean cross-entropy on the same packed rows (float64, written out here); the
    training curve is the baseline's; a held-out folder of another vocabulary is refused."""
    shards, docs = generated
    val = tmp_path / "val"
    write_shards(val, codec.vocab, docs[:60], docs_per_shard=30)
    out = tmp_path / "run"
    argv = train_argv(shards.folder, out, "--val-data", str(val), "--val-every", "4",
                      "--val-rows", "6", steps=10)
    assert main(argv) == 0
    assert "held-out loss" in capsys.readouterr().out
    rows = read_log(out / "metrics.csv")
    assert [int(r["step"]) for r in rows if "val_loss" in r] == [4, 8, 10]
    base = losses(baseline)
    assert all(loss == base[step] for step, loss in losses(out).items())

    model = load_checkpoint(out / "last").model.double()
    dataset, ce, count = PackedDataset(TokenShards(val), 128, seed=0), 0.0, 0
    with torch.no_grad():
        for i in range(6):
            row = dataset[(0, i)]
            logits = model(row["ids"][None], doc_ids=row["doc_ids"][None])[0]
            keep = row["targets"] != -100
            ce += float(F.cross_entropy(logits[keep], row["targets"][keep], reduction="sum"))
            count += int(keep.sum())
    assert abs(rows[-1]["val_loss"] - ce / count) < 1e-4, (rows[-1]["val_loss"], ce / count)

    other = tmp_path / "other"
    vocab = Vocab(text_size=10, image_size=64)
    doc = token_document(TokenizerBundle(vocab).codec(),
                         Document([ImageSegment(torch.zeros(2, 2, dtype=torch.long))]), line=1)
    write_shards(other, vocab, [doc], docs_per_shard=1)
    err = one_line_error(train_argv(shards.folder, tmp_path / "x", "--val-data", str(other)),
                         capsys)
    assert "--val-data" in err and "vocabulary" in err


@pytest.mark.slow
def test_compiled_model_follows_the_eager_curve(train_data, baseline, tmp_path, train_argv,
                                                losses):
    out = tmp_path / "compiled"
    assert main(train_argv(train_data, out, "--compile", steps=3)) == 0
    eager = losses(baseline)
    for step, loss in losses(out).items():
        assert abs(loss - eager[step]) <= 1e-4 * eager[step], (step, loss, eager[step])


def test_a_diverging_run_stops_with_one_line_and_keeps_its_checkpoints(train_data, tmp_path,
                                                                        capsys, train_argv):
    out = tmp_path / "diverged"
    argv = train_argv(train_data, out, "--warmup-steps", "0", "--checkpoint-every", "1",
                      "--grad-clip", "0", lr=1e30, steps=6)
    err = one_line_error(argv, capsys)
    assert "the training loss is" in err and "stopped without saving" in err, err
    step = int(err.split(" at step ")[1].split(":")[0])
    assert step >= 2, err  # the first step's loss, before any update, is finite
    assert f"last checkpoint: step {step - 1}" in err, err
    load_checkpoint(out / "last")  # the last checkpoint is whole and loads
    assert json.loads((out / "last" / "trainer.json").read_text())["step"] == step - 1
    rows = read_log(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, step + 1))
