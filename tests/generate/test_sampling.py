"""Sampling: masks hold, top-k / top-p / temperature / repetition penalty match references."""

from __future__ import annotations

import pytest
import torch

from omnitok import OmnitokError
from omnitok.generate.sampling import (
    ModalitySampling,
    SamplingParams,
    apply_repetition_penalty,
    sample,
    sample_rows,
)


def test_top_k_and_top_p_against_reference():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    assert torch.equal(sample(logits, top_k=1), logits.argmax(-1))
    assert torch.equal(sample(logits, top_p=1e-6), logits.argmax(-1))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(logits, top_k=5, generator=g) for _ in range(200)])
    top5 = logits.topk(5).indices
    assert all((draws[:, b, None] == top5[b]).any(-1).all() for b in range(4))
    # top-p keeps the smallest prefix of sorted ids whose mass reaches p
    probs = logits.softmax(-1)
    draws = torch.stack([sample(logits, top_p=0.5, generator=g) for _ in range(200)])
    for b in range(4):
        order = probs[b].argsort(descending=True)
        k = int((probs[b][order].cumsum(0) < 0.5).sum()) + 1
        assert set(draws[:, b].tolist()) <= set(order[:k].tolist())


def test_draws_follow_the_tempered_softmax():
    torch.manual_seed(1)
    logits = torch.randn(1, 6, dtype=torch.float64)
    n = 20000
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(logits.float(), temperature=0.7, generator=g)
                         for _ in range(n)]).flatten()
    freq = torch.bincount(draws, minlength=6).double() / n
    expected = (logits[0] / 0.7).softmax(-1)
    assert (freq - expected).abs().max() < 4 * (expected * (1 - expected) / n).sqrt().max()


def test_rows_use_their_own_settings_and_generators():
    torch.manual_seed(2)
    logits = torch.randn(3, 40)
    params = [SamplingParams(0.0), SamplingParams(1.0, top_k=1), SamplingParams(2.0, top_k=3)]
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    out = sample_rows(logits, params, generators=gens)
    assert out[0] == logits[0].argmax() and out[1] == logits[1].argmax()
    assert out[2] in logits[2].topk(3).indices
    # a row's draw depends on its own generator only, not on its neighbours
    alone = sample_rows(logits[2:], params[2:], generators=[torch.Generator().manual_seed(2)])
    assert alone[0] == out[2]


def test_mask_is_never_violated():
    logits = torch.zeros(2, 30)
    logits[:, 0] = 100.0  # the best id is forbidden
    allowed = torch.zeros(2, 30, dtype=torch.bool)
    allowed[0, 10:12] = True
    allowed[1, 29] = True
    for temperature in (0.0, 1.0, 5.0):
        for _ in range(20):
            out = sample_rows(logits, [SamplingParams(temperature)] * 2, allowed=allowed)
            assert 10 <= out[0] < 12 and out[1] == 29


def test_repetition_penalty_matches_ctrl_formula():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]], dtype=torch.float64)
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, torch.tensor([2.0]))
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]
    same = apply_repetition_penalty(logits, seen, torch.tensor([1.0]))
    assert torch.equal(same, logits)


def test_settings_are_validated_and_greedy_switch():
    with pytest.raises(OmnitokError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(OmnitokError, match="repetition_penalty"):
        SamplingParams(repetition_penalty=0.0)
    greedy = ModalitySampling().greedy()
    assert {greedy.text.temperature, greedy.image.temperature, greedy.audio.temperature} == {0}
    assert ModalitySampling().for_modality("image").top_k >= 1000
