"""2-D image positions and neighbours: rows, columns and neighbouring codes found in id
streams (against the document parser), a zero start that leaves the model unchanged, cached
decoding that equals the full forward, checkpoints that keep them, and the Llama export that
refuses them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omnitok import OmnitokError
from omnitok.model.checkpoint import load_checkpoint, save_checkpoint
from omnitok.model.config import (
    NEIGHBOURS,
    ConfigError,
    ImageNeighbours,
    ImagePositions,
    ModelArgs,
)
from omnitok.model.export_hf import hf_config_dict
from omnitok.model.image_positions import (
    GridReader,
    grid_neighbours,
    grid_positions,
    grid_summaries,
    image_positions_for,
    image_summaries,
    neighbours_in_image,
)
from omnitok.model.transformer import IMAGE_NEIGHBOUR_WEIGHTS, Transformer
from omnitok.tokenizers.bundle import TokenizerBundle
from omnitok.tokenizers.document import DocumentCodec
from omnitok.tokenizers.vocab import Modality, Vocab

VOCAB = Vocab(text_size=40, image_size=32, max_grid=8)
LAYOUT = image_positions_for(VOCAB)


def stream(seed: int = 0) -> list[int]:
    """Two documents with images of 2x3, 4x4 and 1x5 codes between bits of text."""
    g = torch.Generator().manual_seed(seed)
    v = VOCAB

    def text(*local: int) -> list[int]:
        return [v.to_global("text", i) for i in local]

    def image(h: int, w: int) -> list[int]:
        codes = torch.randint(0, 32, (h * w,), generator=g).tolist()
        return ([v.special("<boi>"), v.grid(h), v.grid(w)]
                + [v.to_global("image", c) for c in codes] + [v.special("<eoi>")])

    bos, eos = [v.special("<bos>")], [v.special("<eos>")]
    return (bos + text(3, 4) + image(2, 3) + text(5) + image(4, 4) + eos
            + bos + image(1, 5) + text(6, 7, 8) + eos)


def reference_positions(ids: list[int]) -> list[tuple[int, int]]:
    """(row, column) from the document parser's image spans and each image's own shape."""
    out = [(0, 0)] * len(ids)
    codec = DocumentCodec(VOCAB)
    start = 0
    for end in [i + 1 for i, t in enumerate(ids) if t == VOCAB.special("<eos>")]:
        doc_ids = ids[start:end]
        for modality, s, e in codec.segment_spans(doc_ids):
            if modality != Modality.IMAGE:
                continue
            w = VOCAB.grid_side(doc_ids[s + 2])
            for k in range(e - s - 4):  # <boi> h w codes <eoi>
                out[start + s + 3 + k] = (k // w + 1, k % w + 1)
        start = end
    return out


def test_rows_and_columns_match_the_document_parser():
    ids = stream()
    got = grid_positions(torch.tensor([ids]), LAYOUT)[0].tolist()
    assert [tuple(p) for p in got] == reference_positions(ids)
    assert sum(r > 0 for r, _ in got) == 6 + 16 + 5


def reference_neighbours(ids: list[int]) -> list[list[int]]:
    """Each code's neighbours, looked up by (image, row, column) in a table of the images."""
    pos = reference_positions(ids)
    image, cells = 0, {}
    images = []
    for i, t in enumerate(ids):
        image += t == VOCAB.special("<boi>")
        images.append(image)
        if pos[i] != (0, 0):
            cells[(image, *pos[i])] = t
    return [[cells.get((images[i], r + dr, c + dc), -1) if r else -1 for dr, dc in NEIGHBOURS]
            for i, (r, c) in enumerate(pos)]


def test_neighbours_match_the_document_parser():
    ids = stream()
    got = grid_neighbours(torch.tensor([ids]), LAYOUT)[0].tolist()
    assert got == reference_neighbours(ids)
    assert sum(n >= 0 for row in got for n in row) > 30
    image = VOCAB.range("image")
    for boi in [i for i, t in enumerate(ids) if t == VOCAB.special("<boi>")]:
        w, codes = VOCAB.grid_side(ids[boi + 2]), []  # what decode steps feed, code by code
        for i in range(boi + 3, len(ids)):
            if not image.start <= ids[i] < image.stop:
                break
            codes.append(ids[i])
            assert neighbours_in_image(codes, w) == got[i]


def test_codes_without_their_header_get_no_position():
    ids = stream()
    boi = ids.index(VOCAB.special("<boi>"))
    cut = torch.tensor([ids[boi + 2:]])  # the row starts after grid(h): header lost
    pos = grid_positions(cut, LAYOUT)[0]
    assert pos[:6].eq(0).all()  # the first image's codes are not located
    assert pos.gt(0).any()  # the later images still are


def layout_model(seed: int = 0, positions: bool = True, neighbours: bool = False,
                 summary: str = "pool") -> Transformer:
    torch.manual_seed(seed)
    near = ImageNeighbours(4, 16, summary, 8) if neighbours else None
    args = ModelArgs.from_name("debug", vocab_size=VOCAB.padded_size,
                               image_positions=LAYOUT if positions else None,
                               image_neighbours=near)
    model = Transformer(args).eval()
    if neighbours:  # a random codebook of unit vectors, as the tokenizer's
        with torch.no_grad():
            model.image_codebook.copy_(F.normalize(torch.randn(32, 4), dim=1))
    return model


def test_zero_start_is_the_model_without_them():
    plain = layout_model(positions=False)
    grown = layout_model(positions=True)
    missing, _ = grown.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing) == {"image_rows.weight", "image_cols.weight"}
    ids = torch.tensor([stream()])
    with torch.no_grad():
        torch.testing.assert_close(grown(ids), plain(ids), rtol=0, atol=0)
        grown.image_rows.weight.normal_()
        assert not torch.allclose(grown(ids), plain(ids))


@pytest.mark.parametrize("summary", ["pool", "cnn"])
def test_neighbours_start_at_zero(summary):
    plain = layout_model()
    grown = layout_model(neighbours=True, summary=summary)
    book = grown.image_codebook.clone()
    missing, _ = grown.load_state_dict(plain.state_dict(), strict=False)
    cnn = [f"image_grid_reader.convs.{i}.{p}" for i in (0, 2, 4) for p in ("bias", "weight")]
    assert sorted(missing) == ["image_codebook", *(cnn if summary == "cnn" else []),
                               "image_neighbours.0.weight", "image_neighbours.2.weight",
                               "image_summary.weight"]
    assert set(missing) <= set(IMAGE_NEIGHBOUR_WEIGHTS)
    grown.image_codebook.copy_(book)
    ids = torch.tensor([stream()])
    with torch.no_grad():
        torch.testing.assert_close(grown(ids), plain(ids), rtol=0, atol=0)
        grown.image_neighbours[2].weight.normal_()
        changed = (grown(ids) - plain(ids)).abs().amax(-1)[0]
    first_code = ids[0].tolist().index(VOCAB.special("<boi>")) + 3
    assert changed[:first_code].eq(0).all()  # nothing before the first image code
    assert changed[first_code] > 0


def closing_summary(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    """What a decode step passes as `summary` when it feeds ids[-1]: the image it closes,
    summarised, when ids[-1] is an <eoi>, else zeros."""
    if int(ids[-1]) != VOCAB.special("<eoi>"):
        return torch.zeros(model.args.image_neighbours.summary_size)
    boi = max(i for i, t in enumerate(ids.tolist()) if t == VOCAB.special("<boi>"))
    return model.image_summary_of(ids[boi:])


def test_summaries_pool_each_image_at_its_end():
    """The maximum over each image's codes, against a loop over the parser's images."""
    ids = stream()
    hidden = torch.randn(1, len(ids), 3)
    got = image_summaries(torch.tensor([ids]), hidden, LAYOUT)[0]
    want = torch.zeros_like(got)
    pos = reference_positions(ids)
    for end in [i for i, t in enumerate(ids) if t == VOCAB.special("<eoi>")]:
        start = max(i for i in range(end) if ids[i] == VOCAB.special("<boi>"))
        codes = [i for i in range(start, end) if pos[i] != (0, 0)]
        want[end] = hidden[0, codes].amax(0)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got.abs().sum(-1).gt(0).sum() == 3  # three images, three ends


def test_grid_summaries_read_each_whole_image_at_its_end():
    """The reader over each image's grid of codebook vectors, against a loop over the
    parser's images, one image at a time; an image cut by the row's start is not read."""
    torch.manual_seed(0)
    book, reader = F.normalize(torch.randn(32, 4), dim=1), GridReader(4, 6)
    ids = stream()
    got = grid_summaries(torch.tensor([ids]), LAYOUT, book, reader, torch.float32)[0]
    want = torch.zeros_like(got)
    for end in [i for i, t in enumerate(ids) if t == VOCAB.special("<eoi>")]:
        boi = max(i for i in range(end) if ids[i] == VOCAB.special("<boi>"))
        h, w = (VOCAB.grid_side(ids[boi + k]) for k in (1, 2))
        codes = [VOCAB.to_local(t)[1] for t in ids[boi + 3:end]]
        grid = book[torch.tensor(codes)].reshape(h, w, 4).permute(2, 0, 1)[None]
        want[end] = reader.convs(grid)[0].flatten(1).amax(1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert got.abs().sum(-1).gt(0).sum() == 3  # three images, three ends
    boi = ids.index(VOCAB.special("<boi>"))
    cut = grid_summaries(torch.tensor([ids[boi + 2:]]), LAYOUT, book, reader, torch.float32)
    assert cut[0].abs().sum(-1).gt(0).sum() == 2  # the first image lost its header


@pytest.mark.parametrize(("neighbours", "summary"),
                         [(False, "pool"), (True, "pool"), (True, "cnn")])
def test_cached_decoding_equals_the_full_forward(neighbours, summary):
    model = layout_model(neighbours=neighbours, summary=summary)
    with torch.no_grad():
        model.image_rows.weight[1:].normal_()
        model.image_cols.weight[1:].normal_()
        if neighbours:
            model.image_neighbours[2].weight.normal_(std=0.1)
            model.image_summary.weight.normal_(std=0.1)
        ids = torch.tensor([stream(), stream(1)])
        full = model(ids).double()
        grid, near = grid_positions(ids, LAYOUT), grid_neighbours(ids, LAYOUT)
        model.setup_cache(2, ids.shape[1])
        n = 7  # prefill inside the first image, then one id at a time
        out = [model(ids[:, :n], input_pos=torch.arange(n))]
        for t in range(n, ids.shape[1]):
            extra = {}
            if neighbours:
                extra = dict(neighbours=near[:, t:t + 1], summary=torch.stack(
                    [closing_summary(model, row[:t + 1]) for row in ids])[:, None])
            out.append(model(ids[:, t:t + 1], input_pos=torch.tensor([t]),
                             image_pos=grid[:, t:t + 1], **extra))
        with pytest.raises(ValueError, match="needs image_pos"):
            model(ids[:, -1:], input_pos=torch.tensor([ids.shape[1] - 1]))
        if neighbours:
            with pytest.raises(ValueError, match="needs neighbours"):
                model(ids[:, -1:], input_pos=torch.tensor([ids.shape[1] - 1]),
                      image_pos=grid[:, -1:])
            with pytest.raises(ValueError, match="needs summary"):
                model(ids[:, -1:], input_pos=torch.tensor([ids.shape[1] - 1]),
                      image_pos=grid[:, -1:], neighbours=near[:, -1:])
        model.clear_cache()
    torch.testing.assert_close(torch.cat(out, dim=1).double(), full, rtol=1e-4, atol=1e-4)


def test_gradients_reach_the_embeddings_but_not_the_blank_row():
    model = layout_model().train()
    model(torch.tensor([stream()])).logsumexp(-1).sum().backward()
    for emb in (model.image_rows, model.image_cols):
        assert emb.weight.grad[0].eq(0).all()
        assert emb.weight.grad[1:5].abs().sum(dim=1).gt(0).all()


@pytest.mark.parametrize("summary", ["pool", "cnn"])
def test_checkpoints_keep_them(tmp_path, summary):
    model = layout_model(neighbours=True, summary=summary)
    with torch.no_grad():
        model.image_cols.weight[1:].normal_()
        model.image_neighbours[2].weight.normal_()
    save_checkpoint(tmp_path / "ck", model, TokenizerBundle(VOCAB))
    loaded = load_checkpoint(tmp_path / "ck").model
    assert loaded.args.image_positions == LAYOUT
    assert loaded.args.image_neighbours == ImageNeighbours(4, 16, summary, 8)
    torch.testing.assert_close(loaded.image_cols.weight, model.image_cols.weight)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    assert loaded.args.num_params() == sum(p.numel() for p in loaded.parameters())


def test_bad_layouts_and_the_llama_export_are_refused():
    with pytest.raises(ConfigError, match="beyond vocab_size"):
        ModelArgs(vocab_size=16, image_positions=LAYOUT)
    with pytest.raises(ConfigError, match="needs image_positions"):
        ModelArgs(vocab_size=VOCAB.padded_size, image_neighbours=ImageNeighbours(4))
    with pytest.raises(ConfigError, match="unknown summary 'mean'"):
        ImageNeighbours(4, summary="mean")
    with pytest.raises(ConfigError, match="empty code range"):
        ImagePositions(boi=1, grid_start=2, code_start=5, code_stop=5, max_side=4)
    with pytest.raises(ValueError, match="no image range"):
        image_positions_for(Vocab(text_size=40))
    with pytest.raises(OmnitokError, match="2-D image positions"):
        hf_config_dict(layout_model())
