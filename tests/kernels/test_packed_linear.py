"""oneDNN packed linear layers: same products as float64, refused once a weight changes."""

from __future__ import annotations

import pytest
import torch

from omnitok import OmnitokError
from omnitok.kernels import packed_linear
from omnitok.model.config import ModelArgs
from omnitok.model.transformer import Transformer

pytestmark = pytest.mark.skipif(not packed_linear.available(), reason="torch without oneDNN")


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("shape", [(1, 96), (5, 96), (2, 3, 96), (1, 1, 96)])
def test_packed_product_matches_float64(dtype, tol, shape):
    if not packed_linear.supports(torch.zeros(1, dtype=dtype)):
        pytest.skip(f"no oneDNN {dtype} on this CPU")
    torch.manual_seed(0)
    w64, x64 = torch.randn(77, 96, dtype=torch.float64), torch.randn(*shape, dtype=torch.float64)
    w, x = w64.to(dtype), x64.to(dtype)
    assert packed_linear.pack(w, batch_hint=shape[0])
    got = packed_linear.linear(x, w).double()
    ref = x.double() @ w.double().T  # the rounded inputs, multiplied exactly
    assert got.shape == (*shape[:-1], 77)
    assert (got - ref).abs().max() / ref.abs().max() < tol


def test_changed_or_unpacked_weights_are_refused():
    w = torch.randn(8, 16)
    packed_linear.pack(w)
    x = torch.randn(2, 16)
    assert torch.allclose(packed_linear.linear(x, w), x @ w.T, atol=1e-5)
    w.add_(1.0)
    with pytest.raises(OmnitokError, match="changed after packing"):
        packed_linear.linear(x, w)
    packed_linear.unpack(w)
    assert not packed_linear.is_packed(w)
    with pytest.raises(OmnitokError, match="not packed"):
        packed_linear.linear(x, w)


def test_packed_model_logits_and_gradients():
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("debug", vocab_size=128, tie_embeddings=True)).eval()
    x = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        ref = model.double()(x)
    model.float()
    assert model.pack_linears()
    with torch.no_grad():
        got = model(x)
    assert (got.double() - ref).abs().max() / ref.abs().max() < 1e-5
    loss = model(x).logsumexp(-1).mean()  # with gradients the plain path runs
    loss.backward()
    assert model.layers[0].attention.wqkv.weight.grad is not None
    model.unpack_linears()
    assert not any(getattr(m, "packed", False) for m in model.modules())


def test_a_dtype_that_cannot_be_packed_drops_the_old_copies():
    """Packed in float32, then cast to a dtype oneDNN cannot pack here: the plain path runs."""
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("debug", vocab_size=128)).eval()
    x = torch.randint(0, 128, (2, 9))
    assert model.pack_linears()
    model.half()  # float16 is never packed
    assert not model.pack_linears()
    assert not any(getattr(m, "packed", False) for m in model.modules())
    with torch.no_grad():
        got = model(x).double()
        ref = model.double()(x)
    assert (got - ref).abs().max() / ref.abs().max() < 1e-2


def test_compiled_graph_calls_the_packed_op():
    torch.manual_seed(0)
    w, x = torch.randn(12, 8), torch.randn(3, 8)
    packed_linear.pack(w)
    fn = torch.compile(lambda a, b: torch.relu(packed_linear.linear(a, b)) + 1, fullgraph=True)
    assert torch.allclose(fn(x, w), torch.relu(x @ w.T) + 1, atol=1e-5)
