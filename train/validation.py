"""Held-out loss during training (`omnitok train --val-data SHARDS`).

Every `--val-every` optimizer steps (and at the last one) the model scores the first
`--val-rows` packed rows of the held-out shard folder: no condition or modality dropout, the
run's loss weights, no z-loss, no gradients. metrics.csv gets `val_loss` (the weighted loss)
and `val_loss_<modality>` on those steps, and curves.png draws the held-out loss beside the
training loss: a training loss that keeps falling while the held-out loss rises is the model
memorising its corpus.

Every rank scores the same rows (FSDP needs every rank in each forward), so the figures do not
depend on the number of processes; rank 0 writes them.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import default_collate

from omnitok import OmnitokError
from omnitok.tokenizers.vocab import Vocab
from omnitok.train.config import TrainConfig
from omnitok.train.datamodule import weights_of
from omnitok.train.objective import GROUPS, objective, summarize
from omnitok.train.packing import PackedDataset
from omnitok.train.shards import TokenShards

KEYS = ("ids", "targets", "doc_ids", "weights")


class Validator:
    """The held-out rows of a run and the loss of the model on them."""

    def __init__(self, shards: TokenShards, config: TrainConfig, vocab: Vocab) -> None:
        if shards.vocab != vocab:
            raise OmnitokError(f"--val-data {config.val_data}: its vocabulary is not the one "
                               f"of the training shards in {config.data}")
        dataset = PackedDataset(shards, config.seq_len, seed=0, window=config.window,
                                weights=weights_of(config))
        n = min(config.val_rows, dataset.rows(0))
        rows = [{k: v for k, v in dataset[(0, i)].items() if k in KEYS} for i in range(n)]
        self.batches = [default_collate(rows[i:i + config.batch_size])
                        for i in range(0, n, config.batch_size)]

    def __call__(self, trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, float]:
        """{"val_loss", "val_loss_<group>"} of the model as it is now."""
        was_training = module.training
        module.eval()
        stats = torch.zeros(len(GROUPS) + 1, 3, dtype=torch.float64)
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                for batch in self.batches:
                    b = {k: v.to(module.device) for k, v in batch.items()}
                    logits = module(b["ids"], b["doc_ids"])
                    out = objective(logits, b["targets"], b["weights"], module.groups)
                    stats += out.stats.cpu()
        finally:
            module.train(was_training)
        metrics = summarize(stats)
        return {"val_loss": metrics["loss"],
                **{f"val_loss_{g}": metrics[f"loss_{g}"] for g in GROUPS
                   if f"loss_{g}" in metrics}}
