"""Condition dropout, modality dropout and loss weights: checked against the codec's own
parse of the edited ids, and against the vocabulary's ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnitok.model.loss import IGNORE
from omnitok.tokenizers.document import SpecialSegment
from omnitok.train.packing import PackedDataset
from omnitok.train.shards import SPAN_KINDS
from omnitok.train.transforms import (
    Dropout,
    LossWeights,
    TransformError,
    apply_edit,
    decide,
    edited_lengths,
    token_weights,
    weight_table,
)


def edited_docs(data, dropout, seed=0, epoch=0):
    spans, offsets = data.span_table()
    edits = decide(spans, offsets, dropout, seed, epoch)
    uncond = data.vocab.special("<uncond>")
    docs = [apply_edit(data[i], *edits.of(offsets, i), uncond) for i in range(len(data))]
    return docs, edits, edited_lengths(data.lengths, spans, offsets, edits)


def parsed_spans(codec, ids) -> list[tuple[str, int, int]]:
    return [(m.value, a, b) for m, a, b in codec.segment_spans(ids.tolist())]


def as_named(spans) -> list[tuple[str, int, int]]:
    return [(SPAN_KINDS[k], a, b) for k, a, b in spans.tolist()]


def test_condition_dropout_keeps_only_the_target(generated, codec):
    data, docs = generated
    edited, edits, lengths = edited_docs(data, Dropout(condition=1.0))
    for before, after, n in zip(docs, edited, lengths):
        assert len(after.ids) == n
        assert as_named(after.spans) == parsed_spans(codec, after.ids)  # spans stay exact
        if len(before.spans) < 2:
            assert after.ids.tolist() == before.ids.tolist()
            continue
        _, start, stop = before.spans[-1]
        expected = [before.ids[0], codec.vocab.special("<uncond>"), *before.ids[start:]]
        assert after.ids.tolist() == expected
        decoded = codec.decode(after.ids)
        assert decoded[0] == SpecialSegment("<uncond>")
        assert decoded[1:] == codec.decode(before.ids).segments[-1:]


def test_modality_dropout_drops_whole_non_target_segments(generated, codec):
    data, docs = generated
    edited, edits, lengths = edited_docs(data, Dropout(modality=1.0, kinds=("image",)))
    for before, after, n in zip(docs, edited, lengths):
        assert len(after.ids) == n
        assert as_named(after.spans) == parsed_spans(codec, after.ids)
        kinds = [k for k, _, _ in as_named(before.spans)]
        kept = [k for k in kinds[:-1] if k != "image"] + kinds[-1:]
        merged = [k for i, k in enumerate(kept) if not (k == "text" == kept[i - 1] and i)]
        assert [k for k, _, _ in as_named(after.spans)] == merged
    none, _, _ = edited_docs(data, Dropout())
    assert all(a.ids.tolist() == b.ids.tolist() for a, b in zip(none, docs))


def test_dropout_is_seeded_and_near_its_rate(generated):
    data, _ = generated
    spans, offsets = data.span_table()
    a = decide(spans, offsets, Dropout(0.3, 0.5), seed=1, epoch=0)
    b = decide(spans, offsets, Dropout(0.3, 0.5), seed=1, epoch=0)
    c = decide(spans, offsets, Dropout(0.3, 0.5), seed=1, epoch=1)
    assert np.array_equal(a.dropped, b.dropped) and np.array_equal(a.uncond, b.uncond)
    assert not np.array_equal(a.uncond, c.uncond)
    eligible = np.diff(offsets) >= 2
    assert 0.2 < a.uncond[eligible].mean() < 0.4 and not a.uncond[~eligible].any()
    with pytest.raises(TransformError):
        Dropout(condition=1.5)


def test_packed_rows_with_dropout_keep_every_edited_token(generated):
    data, _ = generated
    ds = PackedDataset(data, 512, seed=2, dropout=Dropout(0.5, 0.3))
    plan = ds.plan(0)
    edited, _, lengths = edited_docs(data, Dropout(0.5, 0.3), seed=2)
    assert plan.tokens == lengths.sum()
    for r in range(0, plan.rows, 5):
        ids, pos = ds[(0, r)]["ids"], 0
        for doc, a, b in plan.row(r).tolist():
            assert ids[pos:pos + b - a].tolist() == edited[doc].ids[a:b].tolist()
            pos += b - a


def test_condition_weight_scales_only_targets_before_the_last_segment(generated, codec):
    data, _ = generated
    unit = PackedDataset(data, 512, seed=1, dropout=Dropout(0.3, 0.2))
    scaled = PackedDataset(data, 512, seed=1, dropout=Dropout(0.3, 0.2),
                           weights=LossWeights(condition=0.25))
    edited, _, _ = edited_docs(data, Dropout(0.3, 0.2), seed=1)
    plan, conditioning = unit.plan(0), 0
    for r in range(0, plan.rows, 3):
        a_row, b_row = unit[(0, r)], scaled[(0, r)]
        assert torch.equal(a_row["targets"], b_row["targets"])
        expected, pos = a_row["weights"].clone(), 0
        for doc, a, b in plan.row(r).tolist():
            spans = parsed_spans(codec, edited[doc].ids)  # the codec's own segment parse
            for q in range(a + 1, b):  # target at row position pos + q - a - 1 is ids[q]
                if any(start <= q < stop for _, start, stop in spans[:-1]):
                    expected[pos + q - a - 1] *= 0.25
                    conditioning += 1
            pos += b - a
        assert torch.equal(b_row["weights"], expected)
    assert conditioning > 0
    with pytest.raises(TransformError):
        LossWeights(condition=-0.5)


def test_loss_weights_per_modality_and_level(codec):
    vocab = codec.vocab
    weights = LossWeights(text=1.0, image=0.5, audio=2.0, special=0.25, audio_levels=(1.0, 0.1))
    table = weight_table(vocab, weights)
    targets = torch.tensor([[vocab.to_global("text", 3), vocab.to_global("image", 7),
                             vocab.to_global("audio", 1, level=0),
                             vocab.to_global("audio", 1, level=1), vocab.special("<eos>"),
                             vocab.special("<uncond>"), vocab.grid(4), IGNORE]])
    got = token_weights(targets, table)
    expected = torch.tensor([[1.0, 0.5, 2.0, 0.2, 0.25, 0.0, 0.25, 0.0]])
    assert got.shape == targets.shape and torch.allclose(got, expected)
    with pytest.raises(TransformError, match="audio level weights"):
        weight_table(vocab, LossWeights(audio_levels=(1.0,)))
    with pytest.raises(TransformError):
        LossWeights(text=-1)
