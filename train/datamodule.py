"""The LightningDataModule: packed rows of a shard folder, this rank's share, in a resumable
order (train/packing.py).

Every rank builds the same global plan and takes rows rank, rank + world, ...; all ranks hold
the same number of rows per epoch, so they stay in step and a single position {"epoch", "row"}
describes where every rank is. Lightning's own distributed sampler is not used.
"""

from __future__ import annotations

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from omnitok.train.config import TrainConfig
from omnitok.train.mix import ShardMix
from omnitok.train.packing import PackedDataset, ResumableSampler
from omnitok.train.shards import TokenShards
from omnitok.train.transforms import Dropout, LossWeights


def dropout_of(config: TrainConfig) -> Dropout:
    return Dropout(condition=config.condition_dropout, modality=config.modality_dropout,
                   kinds=tuple(config.dropout_kinds))


def weights_of(config: TrainConfig) -> LossWeights:
    return LossWeights(**config.loss_weights, audio_levels=tuple(config.audio_levels))


class ShardDataModule(pl.LightningDataModule):
    def __init__(self, shards: TokenShards | ShardMix, config: TrainConfig,
                 position: dict | None = None) -> None:
        super().__init__()
        self.shards, self.config = shards, config
        self.position = position or {"epoch": 0, "row": 0}
        self.dataset: PackedDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer \
            else (0, 1)
        self.dataset = rows_for_rank(self.shards, self.config, rank, world)

    def train_dataloader(self) -> DataLoader:
        c = self.config
        sampler = ResumableSampler(self.dataset, **self.position)
        return DataLoader(self.dataset, batch_size=c.batch_size, sampler=sampler,
                          num_workers=c.workers, persistent_workers=c.workers > 0)


def rows_for_rank(shards: TokenShards | ShardMix, config: TrainConfig, rank: int,
                  world: int) -> PackedDataset:
    """This rank's packed rows (dropout and loss weights from `config`)."""
    return PackedDataset(shards, config.seq_len, seed=config.seed, rank=rank, world_size=world,
                         window=config.window, dropout=dropout_of(config),
                         weights=weights_of(config))
