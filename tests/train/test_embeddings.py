"""`--codebook-init`: media embedding rows are a linear image of their tokenizer's codebook
(one shared projection per codebook width), at the scale of the model's own initialisation;
nothing else changes."""

from __future__ import annotations

import pytest
import torch

from omnitok.cli import main
from omnitok.model.checkpoint import load_checkpoint
from omnitok.model.config import ModelArgs
from omnitok.model.transformer import Transformer
from omnitok.tokenizers.bundle import TokenizerBundle
from omnitok.train.embeddings import CodebookInitError, codebook_embeddings, media_codebooks


def linear_map(book: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Least-squares M with book @ M ~ rows (float64), and the relative residual."""
    b, r = book.double(), rows.double()
    m = torch.linalg.lstsq(b, r).solution
    return m, float((b @ m - r).norm() / r.norm())


def test_media_rows_are_the_projected_codebooks(tok):
    bundle = TokenizerBundle.load(tok)
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("debug", vocab_size=bundle.vocab.padded_size))
    before = model.tok_embeddings.weight.detach().clone()
    head = model.output.weight.detach().clone()
    assert codebook_embeddings(model, bundle, seed=3) == ["image", "audio_0", "audio_1"]
    after = model.tok_embeddings.weight.detach()
    books, maps, media = media_codebooks(bundle), {}, torch.zeros(len(after), dtype=torch.bool)
    for r in bundle.vocab.ranges:
        book = books.get((r.modality, r.level))
        if book is None:
            continue
        media[r.start:r.stop] = True
        rows = after[r.start:r.stop]
        maps[r.name], residual = linear_map(book, rows)
        assert residual < 1e-5, r.name
        assert torch.isclose(rows.norm(dim=1).mean(), before.norm(dim=1).mean(), rtol=1e-5)
        close = book @ book.T  # the nearest codebook entry is also the nearest embedding
        assert (close.fill_diagonal_(-1e9).argmax(1) == (rows @ rows.T).fill_diagonal_(-1e9)
                .argmax(1)).float().mean() > 0.5
    m0, m1 = maps["audio_0"], maps["audio_1"]  # the RVQ levels share one projection
    scale = float((m0 * m1).sum() / (m0 * m0).sum())
    assert float((m1 - scale * m0).norm() / m1.norm()) < 1e-4 and scale > 0
    assert torch.equal(after[~media], before[~media])
    assert torch.equal(model.output.weight, head)


def test_cli_codebook_init(train_data, tok, tmp_path, capsys, train_argv):
    assert main(train_argv(train_data, tmp_path / "cb", "--codebook-init", "--tokenizer",
                           str(tok), steps=2)) == 0
    assert load_checkpoint(tmp_path / "cb" / "last").tokenizers.image is not None
    for extra, message in ((["--codebook-init"], "needs image or audio tokenizers"),
                           (["--codebook-init", "--init", str(tmp_path / "cb" / "last")],
                            "does not go with --init")):
        assert main(train_argv(train_data, tmp_path / "bad", *extra)) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("omnitok: error: ") and message in err and "\n" not in err, err


def test_a_codebook_that_does_not_fit_its_range(tok, monkeypatch):
    from omnitok.train import embeddings

    bundle = TokenizerBundle.load(tok)
    model = Transformer(ModelArgs.from_name("debug", vocab_size=bundle.vocab.padded_size))
    books = {k: v[:10] for k, v in media_codebooks(bundle).items()}
    monkeypatch.setattr(embeddings, "media_codebooks", lambda _: books)
    with pytest.raises(CodebookInitError, match="a codebook of 10 entries"):
        codebook_embeddings(model, bundle)
