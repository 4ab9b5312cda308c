"""The training objective, per-modality statistics, the schedule, freezing, activation
checkpointing and the loss-curve PNG (no Trainer involved)."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from omnitok.model.config import ImageNeighbours, ModelArgs
from omnitok.model.image_positions import image_positions_for
from omnitok.model.loss import IGNORE, token_losses
from omnitok.model.transformer import IMAGE_NEIGHBOUR_WEIGHTS, IMAGE_POSITION_WEIGHTS, Transformer
from omnitok.tokenizers.vocab import AudioSpec, Vocab
from omnitok.train.curves import plot_curves
from omnitok.train.freeze import FreezeError, freeze, mask_gradients
from omnitok.train.module import enable_activation_checkpointing, lr_factor
from omnitok.train.objective import GROUPS, group_table, objective, summarize

VOCAB = Vocab(text_size=50, image_size=16, audio=AudioSpec(8, 2, 16000, 50.0))


def batch(seed: int = 0, b: int = 2, t: int = 24):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, VOCAB.padded_size, generator=g, dtype=torch.float64)
    targets = torch.randint(0, VOCAB.size, (b, t), generator=g)
    targets[0, :3] = IGNORE
    weights = torch.rand(b, t, generator=g, dtype=torch.float64) * (targets != IGNORE)
    return logits, targets, weights


def test_objective_is_the_weighted_mean_of_token_losses():
    logits, targets, weights = batch()
    for z in (0.0, 1e-3):
        out = objective(logits, targets, weights, group_table(VOCAB), z_loss=z)
        ref = token_losses(logits, targets, z_loss=z).double()
        expected = (ref * weights).sum() / weights.sum()
        assert torch.allclose(out.loss.double(), expected, rtol=1e-6), z
        assert math.isclose(summarize(out.stats)["loss"], float(expected), rel_tol=1e-6)
    plain = objective(logits, targets, weights, group_table(VOCAB))
    global_sum = objective(logits, targets, weights, group_table(VOCAB),
                           normalizer=2 * weights.sum())  # as if a second rank held as much
    assert torch.allclose(global_sum.loss, plain.loss / 2)


def test_statistics_per_modality_of_the_trained_targets():
    logits, targets, weights = batch(1)
    weights[:, ::3] = 0  # not trained on: left out of the statistics
    out = objective(logits, targets, weights, group_table(VOCAB))
    metrics = summarize(out.stats)
    ce = token_losses(logits, targets).double()
    kinds = {g: [] for g in GROUPS}
    for pos, (t, w) in enumerate(zip(targets.flatten().tolist(), weights.flatten().tolist())):
        if t != IGNORE and w > 0:
            kinds[VOCAB.modality_of(t).value].append(pos)
    pred = logits.flatten(0, 1).argmax(-1)
    for g, where in kinds.items():
        if not where:
            assert f"loss_{g}" not in metrics
            continue
        idx = torch.tensor(where)
        assert math.isclose(metrics[f"loss_{g}"], float(ce.flatten()[idx].mean()), rel_tol=1e-6)
        acc = float((pred[idx] == targets.flatten()[idx]).double().mean())
        assert math.isclose(metrics[f"acc_{g}"], acc) and metrics[f"tokens_{g}"] == len(where)


def test_gradient_flows_only_through_weighted_targets():
    logits, targets, weights = batch(2)
    weights[1] = 0
    logits.requires_grad_(True)
    objective(logits, targets, weights, group_table(VOCAB), z_loss=1e-2).loss.backward()
    assert logits.grad[1].abs().max() == 0 and logits.grad[0].abs().max() > 0


def test_warmup_then_cosine():
    f = [lr_factor(s, warmup=4, total=20, floor=0.1) for s in range(25)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0] and f[4] == 1.0
    assert all(a >= b for a, b in zip(f[4:], f[5:])) and f[20:] == [pytest.approx(0.1)] * 5


def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelArgs.from_name("debug", vocab_size=VOCAB.padded_size))


def train_steps(net: Transformer, masks, steps: int = 3) -> None:
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    for s in range(steps):
        ids = torch.randint(0, VOCAB.size, (2, 16), generator=torch.Generator().manual_seed(s))
        net(ids).square().mean().backward()
        mask_gradients(net, masks)
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("names", [["text"], ["backbone"], ["embeddings"]])
def test_frozen_weights_do_not_change(names):
    net = model()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    masks = freeze(net, VOCAB, names)
    train_steps(net, masks)
    after, text = net.state_dict(), VOCAB.range("text")
    backbone = [k for k in after if k.startswith(("layers.", "norm."))]
    rows = ["tok_embeddings.weight", "output.weight"]
    if names != ["embeddings"]:
        assert all(torch.equal(after[k], before[k]) for k in backbone)
    if names == ["text"]:
        for k in rows:
            assert torch.equal(after[k][text.start:text.stop], before[k][text.start:text.stop])
            assert not torch.equal(after[k][text.stop:], before[k][text.stop:])
    if names == ["embeddings"]:
        assert all(torch.equal(after[k], before[k]) for k in rows)
        assert not all(torch.equal(after[k], before[k]) for k in backbone)
    if names == ["backbone"]:
        assert all(not torch.equal(after[k], before[k]) for k in rows)


@pytest.mark.parametrize("names", [["image-codes"], ["text", "image-codes"]])
def test_frozen_image_code_rows_do_not_change(names):
    net = model()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    masks = freeze(net, VOCAB, names)
    train_steps(net, masks)
    after, image, text = net.state_dict(), VOCAB.range("image"), VOCAB.range("text")
    emb, head = "tok_embeddings.weight", "output.weight"
    assert torch.equal(after[emb][image.start:image.stop], before[emb][image.start:image.stop])
    assert not torch.equal(after[head][image.start:image.stop],
                           before[head][image.start:image.stop])
    text_rows_fixed = torch.equal(after[emb][text.start:text.stop],
                                  before[emb][text.start:text.stop])
    assert text_rows_fixed is ("text" in names)
    assert not torch.equal(after[emb][image.stop:], before[emb][image.stop:])


@pytest.mark.parametrize("names,trains", [(["embeddings"], False), (["text"], True),
                                          (["backbone"], True)])
def test_image_inputs_freeze_with_the_embeddings(names, trains):
    args = ModelArgs.from_name("debug", vocab_size=VOCAB.padded_size,
                               image_positions=image_positions_for(VOCAB),
                               image_neighbours=ImageNeighbours(4, 8))
    net = Transformer(args)
    masks = freeze(net, VOCAB, names)
    reader = [net.image_rows, net.image_cols, net.image_summary, *net.image_neighbours[::2]]
    assert all(m.weight.requires_grad is trains for m in reader)
    assert not set(masks) & set(IMAGE_POSITION_WEIGHTS + IMAGE_NEIGHBOUR_WEIGHTS)


def test_freeze_errors():
    with pytest.raises(FreezeError, match="unknown"):
        freeze(model(), VOCAB, ["head"])
    with pytest.raises(FreezeError, match="no weight"):
        freeze(model(), VOCAB, ["backbone", "embeddings"])
    with pytest.raises(FreezeError, match="no image codes"):
        freeze(model(), Vocab(text_size=50, audio=AudioSpec(8, 2, 16000, 50.0)), ["image-codes"])


def test_activation_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, VOCAB.size, (2, 20))
    doc_ids = torch.tensor([[0] * 8 + [1] * 12, [0] * 20])
    grads = []
    for recompute in (False, True):
        net = model()
        if recompute:
            enable_activation_checkpointing(net)
        net(ids, doc_ids=doc_ids).square().mean().backward()
        grads.append({k: p.grad for k, p in net.named_parameters()})
        assert list(net.state_dict()) == list(model().state_dict())
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-7), k


def test_curves_png(tmp_path):
    rows = [{"step": s, "loss": 5 - s / 10, "loss_text": 4 - s / 20, "acc_text": s / 50,
             "loss_audio": 6 - s / 9} for s in range(1, 30)]
    path = plot_curves(rows, tmp_path / "curves.png", "run")
    image = Image.open(path)
    assert image.size == (1120, 384) and len(image.getcolors(1 << 16)) > 5
    plot_curves(rows[:1], tmp_path / "one.png")  # a single step still draws
    plot_curves([], tmp_path / "none.png")
