"""Flash attention forward and dQ/dK/dV against a float64 reference, on random odd shapes."""

from __future__ import annotations

import itertools

import pytest
import torch

from omnitok.kernels import reference

LENGTHS = (1, 17, 77, 113, 256)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MODES = ("causal", "causal_cross", "full_cross", "docs_causal", "docs_full")
# every mode in every dtype; GQA ratios and head dims cycle so each appears in every run
CASES = [(mode, dtype, (1, 2, 4, 8)[i % 4], (64, 128)[i // 4 % 2])
         for i, (mode, dtype) in enumerate(itertools.product(MODES, DTYPES))]
MAX_WORK = 8 * 256 * 256  # B * H * T * S: keeps a case near a second under the interpreter


def random_docs(rng, b: int, t: int) -> torch.Tensor:
    """(B, T) document ids: runs of random lengths, 1-token documents included."""
    rows = []
    for _ in range(b):
        ids, doc = [], 0
        while len(ids) < t:
            n = rng.choice((1, 1, 2, rng.randint(3, 40), rng.randint(40, 200)))
            ids += [doc] * n
            doc += 1
        rows.append(ids[:t])
    return torch.tensor(rows)


def random_shape(rng, mode: str, ratio: int) -> tuple[int, int, int, int]:
    """(B, Hkv, T, S) with T == S for self-attention modes, T != S for cross modes."""
    t = rng.choice(LENGTHS)
    s = rng.choice([n for n in LENGTHS if n != t]) if mode.endswith("cross") else t
    b, hkv = rng.choice((1, 2)), rng.choice((1, 2))
    if b * hkv * ratio * t * s > MAX_WORK:
        b = hkv = 1
    return b, hkv, t, s


def run_case(q, k, v, causal, doc_ids, dtype, oracle, device):
    from omnitok.kernels.flash_attention import flash_attention

    q, k, v = (x.detach().to(device, dtype).requires_grad_() for x in (q, k, v))
    out = flash_attention(q, k, v, causal=causal, doc_ids=doc_ids)
    do = torch.randn_like(out)
    out.backward(do)
    refs = {}
    for ref_dtype in [torch.float64] + ([dtype] if dtype != torch.float32 else []):
        qr, kr, vr = (x.detach().cpu().to(ref_dtype).requires_grad_() for x in (q, k, v))
        o = reference.attention(qr, kr, vr, causal=causal,
                                doc_ids=None if doc_ids is None else doc_ids.cpu())
        o.backward(do.cpu().to(ref_dtype))
        refs[ref_dtype] = (o, qr.grad, kr.grad, vr.grad)
    low = refs.get(dtype, (None,) * 4)
    for name, got, r64, rlow in zip(("out", "dq", "dk", "dv"), (out, q.grad, k.grad, v.grad),
                                    refs[torch.float64], low):
        if k.shape[2] == 1 and name in ("dq", "dk"):
            # one key: softmax has no gradient, dQ = dK = 0 exactly; the kernel sums fp32
            # rounding noise of dP - Delta over all queries of a group
            assert got.abs().max() <= 1e-4, f"{name} should be 0 ({oracle.case}, {oracle.seed})"
            continue
        oracle.check(name, got, r64, rlow)


@pytest.mark.parametrize("mode,dtype,ratio,d", CASES,
                         ids=[f"{m}-{str(dt)[6:]}-gqa{r}-d{d}" for m, dt, r, d in CASES])
def test_flash_attention(mode, dtype, ratio, d, seeded, device):
    rng, oracle = seeded
    b, hkv, t, s = random_shape(rng, mode, ratio)
    causal = "causal" in mode
    doc_ids = random_docs(rng, b, t).to(device) if mode.startswith("docs") else None
    oracle.case = f"B={b} H={hkv * ratio} Hkv={hkv} T={t} S={s} D={d} {mode}"
    q = torch.randn(b, hkv * ratio, t, d)
    k, v = torch.randn(b, hkv, s, d), torch.randn(b, hkv, s, d)
    run_case(q, k, v, causal, doc_ids, dtype, oracle, device)


@pytest.mark.parametrize("d", [16, 40, 96])
def test_padded_head_dims_and_strided_inputs(d, seeded, device):
    """Head dims that are not a power of two, and q/k/v as the model makes them: views of a
    (B, T, H, D) projection transposed to (B, H, T, D)."""
    rng, oracle = seeded
    t = rng.choice((17, 77))
    oracle.case = f"T={t} D={d} strided"
    qkv = torch.randn(2, t, 4 + 2 * 2, d)
    q, k, v = (x.transpose(1, 2) for x in qkv.split([4, 2, 2], dim=2))
    run_case(q, k, v, True, None, torch.float32, oracle, device)


def test_one_token_documents_and_single_tokens(seeded, device):
    """Rows of 1- and 2-token documents (a query may see only itself), and T = S = 1."""
    _, oracle = seeded
    oracle.case = "1-token documents"
    doc = torch.tensor([[0, 1, 1, 2, 3, 4, 4, 5, 6, 6, 7, 8, 9, 9, 10, 11, 11, 12, 13]])
    q, k, v = torch.randn(1, 2, 19, 64), torch.randn(1, 1, 19, 64), torch.randn(1, 1, 19, 64)
    run_case(q, k, v, True, doc.to(device), torch.float32, oracle, device)
    run_case(q, k, v, False, doc.to(device), torch.float32, oracle, device)
    oracle.case = "T=S=1"
    q, k, v = torch.randn(2, 4, 1, 64), torch.randn(2, 2, 1, 64), torch.randn(2, 2, 1, 64)
    run_case(q, k, v, False, None, torch.float32, oracle, device)


def test_empty_sequences(device):
    from omnitok.kernels.flash_attention import flash_attention

    q, k = torch.randn(1, 2, 5, 64, device=device), torch.randn(1, 1, 0, 64, device=device)
    assert torch.equal(flash_attention(q, k, k), torch.zeros_like(q))  # no key: zeros
    assert flash_attention(q[:, :, :0], q[:, :1], q[:, :1]).shape == (1, 2, 0, 64)


def test_repeated_document_id_is_a_new_document(device):
    """Documents are runs: an id seen again after another one starts a new document."""
    from omnitok.kernels.flash_attention import flash_attention

    doc = torch.tensor([[0, 0, 0, 1, 1, 0, 0, 0]], device=device)
    q, k, v = (torch.randn(1, 2, 8, 64, device=device) for _ in range(3))
    out = flash_attention(q, k, v, doc_ids=doc)
    alone = flash_attention(q[:, :, 5:], k[:, :, 5:], v[:, :, 5:])
    assert (out[:, :, 5:] - alone).abs().max() < 1e-5
