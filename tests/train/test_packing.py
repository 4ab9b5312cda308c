"""Packing: every token exactly once and in order, doc ids, splitting, efficiency, ranks,
resuming, DataLoader use."""

from __future__ import annotations

import pickle
from collections import defaultdict

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from omnitok.model.loss import IGNORE
from omnitok.train.packing import (
    PackedDataset,
    PackingError,
    ResumableSampler,
    plan_epoch,
    resume_state,
    split_document,
)
from omnitok.train.shards import AUDIO, IMAGE, SPECIAL, TEXT

N_Q = 2


def plan_of(data, seq_len, **kw):
    spans, offsets = data.span_table()
    return plan_epoch(data.lengths, spans, offsets, seq_len, n_q=N_Q, **kw)


def rebuilt(plan, seq_len) -> dict[int, list[int]]:
    """Document -> its pieces' (start, stop), in the order the rows hold them."""
    out = defaultdict(list)
    for r in range(plan.rows):
        row = plan.row(r)
        assert (row[:, 2] - row[:, 1]).sum() <= seq_len
        for doc, a, b in row.tolist():
            out[doc].append((a, b))
    return out


@pytest.mark.parametrize("seq_len", [64, 300, 1024])
def test_every_token_exactly_once_in_order(generated, seq_len):
    data, docs = generated
    plan = plan_of(data, seq_len, seed=3)
    pieces = rebuilt(plan, seq_len)
    images = {i for i, d in enumerate(docs)
              if any(k == IMAGE and b - a > seq_len for k, a, b in d.spans.tolist())}
    assert set(pieces) == set(range(len(docs))) - images
    assert sum(plan.skipped.values()) == len(images)
    for doc, cuts in pieces.items():
        assert sorted(cuts) == cuts  # the pieces of a split document stay in order
        assert cuts[0][0] == 0 and cuts[-1][1] == len(docs[doc])
        assert all(a == prev_b for (a, _), (_, prev_b) in zip(cuts[1:], cuts))
    assert plan.tokens == sum(len(docs[d]) for d in pieces)


def test_splits_prefer_segment_boundaries_and_never_cut_images():
    # <bos> text[1, 11) image[11, 79) audio[79, 201) <eos>: 202 ids, 8x8 image, 60 frames
    spans = np.array([[TEXT, 1, 11], [IMAGE, 11, 79], [AUDIO, 79, 201]])
    assert split_document(spans, 202, 100, N_Q) == [(0, 79), (79, 178), (178, 202)]
    assert split_document(spans, 202, 80, N_Q) == [(0, 79), (79, 158), (158, 202)]
    assert split_document(spans, 202, 70, N_Q) == [(0, 11), (11, 79), (79, 148), (148, 202)]
    assert split_document(spans, 202, 60, N_Q) == "image longer than a row"
    long_text = np.array([[TEXT, 1, 99]])
    assert split_document(long_text, 100, 40, N_Q) == [(0, 40), (40, 80), (80, 100)]
    for a, _ in split_document(spans, 202, 91, N_Q):  # audio cut between whole frames
        assert not 11 < a < 79 and (a <= 80 or (a - 80) % N_Q == 0)


def test_rows_hold_the_documents_with_doc_ids_and_targets(generated):
    data, docs = generated
    ds = PackedDataset(data, 512, seed=1)
    plan = ds.plan(0)
    for r in range(0, ds.rows(0), 7):
        item = ds[(0, r)]
        ids, targets, doc_ids = item["ids"], item["targets"], item["doc_ids"]
        pos = 0
        for j, (doc, a, b) in enumerate(plan.row(r).tolist()):
            assert ids[pos:pos + b - a].tolist() == docs[doc].ids[a:b].tolist()
            assert (doc_ids[pos:pos + b - a] == j).all()
            assert targets[pos:pos + b - a - 1].tolist() == docs[doc].ids[a + 1:b].tolist()
            assert targets[pos + b - a - 1] == IGNORE
            pos += b - a
        assert (ids[pos:] == data.vocab.special("<pad>")).all()
        assert (targets[pos:] == IGNORE).all() and (item["weights"][pos:] == 0).all()
        assert pos == 512 or (doc_ids[pos:] == doc_ids[pos - 1] + 1).all()


def test_packing_efficiency_on_a_generated_corpus(generated):
    data, _ = generated
    for seq_len in (512, 1024, 2048):
        plan = plan_of(data, seq_len)
        assert plan.efficiency >= 0.95, (seq_len, plan.summary())


def test_deterministic_given_the_seed(generated):
    data, _ = generated
    a, b = plan_of(data, 256, seed=5, epoch=1), plan_of(data, 256, seed=5, epoch=1)
    assert np.array_equal(a.pieces, b.pieces) and np.array_equal(a.row_starts, b.row_starts)
    other = plan_of(data, 256, seed=5, epoch=2)
    assert not np.array_equal(a.pieces, other.pieces)
    with pytest.raises(PackingError):
        plan_of(data, 1)


def test_ranks_are_disjoint_and_cover_every_row(generated):
    data, _ = generated
    full = PackedDataset(data, 256, seed=2)
    n = full.plan(0).rows
    world = 3
    ranks = [PackedDataset(data, 256, seed=2, rank=r, world_size=world) for r in range(world)]
    assert {ds.rows(0) for ds in ranks} == {-(-n // world)}
    seen = {}
    for r, ds in enumerate(ranks):
        for row in range(ds.rows(0)):
            item = ds[(0, row)]
            g = row * world + r
            if g >= n:  # the padding row that keeps ranks in step
                assert item["weights"].sum() == 0 and (item["targets"] == IGNORE).all()
                continue
            assert g not in seen
            seen[g] = item["ids"]
            assert torch.equal(item["ids"], full[(0, g)]["ids"])
    assert sorted(seen) == list(range(n))
    with pytest.raises(PackingError):
        PackedDataset(data, 256, rank=3, world_size=3)


def test_resume_continues_the_same_order(generated):
    data, _ = generated
    ds = PackedDataset(data, 512, seed=4)
    loader = DataLoader(ds, batch_size=3, sampler=ResumableSampler(ds, epochs=2))
    batches = list(loader)
    assert len(batches) == len(loader)
    state = resume_state(batches[4])
    resumed = DataLoader(ds, batch_size=3, sampler=ResumableSampler(ds, **state, epochs=2))
    rest = [b["ids"] for b in resumed]
    after = torch.cat([b["ids"] for b in batches[5:]])
    assert torch.equal(torch.cat(rest), after)
    fresh = PackedDataset(pickle.loads(pickle.dumps(data)), 512, seed=4)  # no mmap pickled
    assert torch.equal(fresh[(1, 0)]["ids"], ds[(1, 0)]["ids"])


def test_dataloader_workers(generated):
    data, _ = generated
    ds = PackedDataset(data, 512, seed=4)
    sampler = ResumableSampler(ds, epochs=1)
    with_workers = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2)
    alone = DataLoader(ds, batch_size=4, sampler=sampler)
    for a, b in zip(with_workers, alone):
        assert all(torch.equal(a[k], b[k]) for k in ("ids", "targets", "doc_ids", "weights"))


def test_special_tokens_are_kept(generated):
    data, _ = generated
    spans, _ = data.span_table()
    assert set(np.unique(spans[:, 0])) <= {TEXT, IMAGE, AUDIO, SPECIAL}


def test_packed_rows_give_each_document_its_own_logits(generated):
    from omnitok.model.config import ModelArgs
    from omnitok.model.transformer import Transformer

    data, docs = generated
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("debug", vocab_size=data.vocab.padded_size)).eval()
    ds = PackedDataset(data, 256, seed=0)
    batch = next(iter(DataLoader(ds, batch_size=2, sampler=ResumableSampler(ds, epochs=1))))
    with torch.no_grad():
        packed = model(batch["ids"], doc_ids=batch["doc_ids"])  # (2, 256, V)
        for b in range(2):
            pos = 0
            for doc, a, c in ds.plan(0).row(b).tolist():
                alone = model(torch.as_tensor(docs[doc].ids[a:c])[None])[0]
                assert torch.allclose(packed[b, pos:pos + c - a], alone, atol=1e-5)
                pos += c - a
