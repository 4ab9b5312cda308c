"""KV-cache decode attention (split-KV) against a float64 reference, mixed cache lengths."""

from __future__ import annotations

import pytest
import torch

from omnitok.kernels import reference

CAPACITIES = (17, 77, 113, 256)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def decode(*args, **kwargs):
    from omnitok.kernels.decode_attention import decode_attention

    return decode_attention(*args, **kwargs)


def check_against_reference(q, k, v, q_pos, out, oracle):
    ref64 = reference.attention(q.cpu().double(), k.cpu().double(), v.cpu().double(),
                                q_pos=q_pos.cpu())
    low = None if q.dtype == torch.float32 else reference.attention(
        q.cpu(), k.cpu(), v.cpu(), q_pos=q_pos.cpu())
    oracle.check("out", out, ref64, low)


@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_decode_mixed_cache_lengths(dtype, t, seeded, device):
    """Batched requests whose caches hold 1 .. capacity entries, T new queries each."""
    rng, oracle = seeded
    s = rng.choice(CAPACITIES)
    ratio, d = rng.choice((1, 2, 4, 8)), rng.choice((64, 128))
    hkv = rng.choice((1, 2))
    lens = torch.tensor([min(s, max(t, n)) for n in (1, s, rng.randint(1, s))])
    splits = rng.choice((None, 1, 2, 3, 7))
    oracle.case = f"H={hkv * ratio} Hkv={hkv} T={t} S={s} D={d} lens={lens.tolist()} " \
                  f"splits={splits}"
    q = torch.randn(3, hkv * ratio, t, d, device=device, dtype=dtype)
    k, v = (torch.randn(3, hkv, s, d, device=device, dtype=dtype) for _ in range(2))
    out = decode(q, k, v, lens.to(device), num_splits=splits)
    q_pos = lens[:, None] - t + torch.arange(t)
    check_against_reference(q, k, v, q_pos, out, oracle)


def test_split_kv_combine_equals_one_pass(seeded, device):
    """Many splits (some past every sequence's end, so empty) combine to the one-pass result."""
    rng, oracle = seeded
    s = 256
    lens = torch.tensor([1, 40, 256, rng.randint(2, 255)], device=device)
    q = torch.randn(4, 8, 1, 64, device=device)
    k, v = (torch.randn(4, 2, s, 64, device=device) for _ in range(2))
    one = decode(q, k, v, lens, num_splits=1)
    for splits in (3, 8):
        many = decode(q, k, v, lens, num_splits=splits)
        assert (many - one).abs().max() <= 1e-5, f"{splits} splits (seed {oracle.seed})"
    oracle.case = "split-KV"
    check_against_reference(q, k, v, lens[:, None].cpu() - 1, one, oracle)


def test_arbitrary_positions_and_stale_cache(seeded, device):
    """q_pos in any order, and cache entries past a position (stale slots) never leak in."""
    _, oracle = seeded
    oracle.case = "q_pos"
    q = torch.randn(2, 4, 3, 64, device=device)
    k, v = (torch.randn(2, 2, 77, 64, device=device) for _ in range(2))
    q_pos = torch.tensor([[5, 2, 40], [76, 0, 11]], device=device)
    out = decode(q, k, v, q_pos=q_pos, num_splits=3)
    check_against_reference(q, k, v, q_pos, out, oracle)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 41:], v2[:, :, 41:] = 1e4, -1e4  # garbage after the largest position of row 0
    assert torch.equal(decode(q, k2, v2, q_pos=q_pos, num_splits=3)[0], out[0])


def test_decode_matches_flash_attention_prefill(device):
    """The multi-token case: T queries at the end of a full cache = bottom-right causal."""
    from omnitok.kernels.flash_attention import flash_attention

    q = torch.randn(2, 4, 17, 64, device=device)
    k, v = (torch.randn(2, 1, 113, 64, device=device) for _ in range(2))
    lens = torch.tensor([113, 113], device=device)
    assert (decode(q, k, v, lens) - flash_attention(q, k, v)).abs().max() <= 1e-5


def test_bad_arguments(device):
    q = torch.randn(1, 4, 1, 64, device=device)
    k = torch.randn(1, 3, 8, 64, device=device)
    with pytest.raises(ValueError, match="not a multiple"):
        decode(q, k, k, torch.tensor([3], device=device))
    with pytest.raises(ValueError, match="exactly one"):
        decode(q, k[:, :2], k[:, :2])
