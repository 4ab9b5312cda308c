"""The LightningModule: the objective (train/objective.py), AdamW with warmup + cosine, frozen
weights (train/freeze.py), activation checkpointing and `torch.compile` switches.

Step statistics (weighted loss, per-modality loss and accuracy) are summed over the
micro-batches of an optimizer step and over the ranks, then handed to the callbacks
(train/callbacks.py) by `pop_step_stats`.
"""

from __future__ import annotations

import functools
import math

import lightning.pytorch as pl
import torch
from torch.utils.checkpoint import checkpoint

from omnitok.model.transformer import Transformer
from omnitok.tokenizers.vocab import Vocab
from omnitok.train.config import TrainConfig
from omnitok.train.freeze import mask_gradients
from omnitok.train.objective import GROUPS, group_table, objective
from omnitok.train.packing import resume_state


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Multiplier of the peak learning rate at `step`: linear warmup over `warmup` steps, then
    a cosine from 1 down to `floor` at `total` steps (and `floor` after)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def enable_activation_checkpointing(model: Transformer) -> None:
    """Recompute each block's activations in the backward pass instead of storing them
    (parameter names and the state dict stay the same)."""
    for layer in model.layers:
        layer.forward = functools.partial(checkpoint, type(layer).forward.__get__(layer),
                                          use_reentrant=False)


def unwrapped_name(name: str) -> str:
    """A parameter's name without the wrapper modules FSDP and checkpointing insert."""
    return ".".join(p for p in name.split(".") if not (p.startswith("_") and p.endswith("_module")))


class OmnitokModule(pl.LightningModule):
    def __init__(self, model: Transformer, vocab: Vocab, config: TrainConfig,
                 masks: dict[str, torch.Tensor] | None = None, start_step: int = 0,
                 optimizer_state: dict | None = None) -> None:
        super().__init__()
        self.model, self.config, self.masks = model, config, masks or {}
        # matrices get weight decay; decided here, before FSDP flattens them into 1-D shards
        self.decayed = {n for n, p in model.named_parameters() if p.dim() >= 2} - set(self.masks)
        self.register_buffer("groups", group_table(vocab), persistent=False)
        self.z_loss = model.args.z_loss if config.z_loss is None else config.z_loss
        self.start_step, self.optimizer_state = start_step, optimizer_state
        self.data_state: dict | None = None  # the next row after the last batch trained on
        self._stats: torch.Tensor | None = None
        if config.activation_checkpointing and config.strategy != "fsdp":
            enable_activation_checkpointing(model)
        self._forward = [torch.compile(model) if config.compile else model]  # not a submodule

    @property
    def step(self) -> int:
        """Optimizer steps done, counting those of the run this one resumes."""
        return self.start_step + self.trainer.global_step

    def forward(self, ids: torch.Tensor, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self._forward[0](ids, doc_ids=doc_ids)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["ids"], batch["doc_ids"])  # (B, T, V)
        weights = batch["weights"]
        total = self.trainer.strategy.reduce(weights.sum().detach().float(), reduce_op="sum")
        out = objective(logits, batch["targets"], weights, self.groups, z_loss=self.z_loss,
                        normalizer=total / self.trainer.world_size)
        self._stats = out.stats if self._stats is None else self._stats + out.stats
        self.data_state = resume_state(batch)
        return out.loss

    def pop_step_stats(self) -> torch.Tensor:
        """(len(GROUPS) + 1, 3) float64 statistics of the optimizer step just taken, summed
        over its micro-batches and over the ranks (see objective.STAT_COLUMNS); on the CPU."""
        stats = self._stats if self._stats is not None else \
            torch.zeros(len(GROUPS) + 1, 3, dtype=torch.float64)
        self._stats = None
        return self.trainer.strategy.reduce(stats.to(self.device), reduce_op="sum").cpu()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the gradients of frozen rows, then clip the gradient norm (here rather than by
        the Trainer, whose mixed-precision plugin refuses to clip for a fused AdamW)."""
        if self.masks:
            mask_gradients(self.model, self.masks)
        if self.config.grad_clip:
            wrapped = self.trainer.strategy.model
            if hasattr(wrapped, "clip_grad_norm_"):  # FSDP: a norm over all shards
                wrapped.clip_grad_norm_(self.config.grad_clip)
            else:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)

    def configure_optimizers(self):
        c = self.config
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (decay if unwrapped_name(name) in self.decayed else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": c.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        device = next(self.model.parameters()).device.type
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=c.lr,
                                      betas=(c.beta1, c.beta2),
                                      fused=device in ("cpu", "cuda") or None)
        floor = c.min_lr / c.lr
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(lr_factor, warmup=c.warmup_steps, total=c.max_steps,
                                         floor=floor))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_start(self) -> None:
        if self.optimizer_state is None:
            return
        from omnitok.train.distributed import load_optimizer_state

        optimizer = self.optimizers().optimizer
        load_optimizer_state(self.trainer.strategy, optimizer, self.optimizer_state["optimizer"])
        self.lr_schedulers().load_state_dict(self.optimizer_state["scheduler"])
        self.optimizer_state = None

    def current_lr(self) -> float:
        return float(self.optimizers().optimizer.param_groups[0]["lr"])
