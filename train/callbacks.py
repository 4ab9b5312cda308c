"""What happens between optimizer steps: metrics (CSV, TensorBoard, progress bar), the
held-out loss every --val-every steps (train/validation.py), training checkpoints every N
steps and at the end, and the PNG of the loss curves. A loss that is not finite stops the run
before anything is saved from it (`DivergedError`): the checkpoints already written stay.

Lightning calls `on_train_batch_end` after every micro-batch; an optimizer step has finished
when `trainer.global_step` moved. Gathering weights and metrics are collective operations, so
every rank takes part; only rank 0 writes files.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from omnitok import OmnitokError
from omnitok.model.config import ModelArgs
from omnitok.tokenizers.bundle import TokenizerBundle
from omnitok.train.config import TrainConfig
from omnitok.train.curves import plot_curves
from omnitok.train.distributed import full_optimizer_state, full_weights
from omnitok.train.logs import METRICS, MetricsWriter, read_log
from omnitok.train.objective import GROUPS, summarize
from omnitok.train.state import TrainState, save_train_checkpoint
from omnitok.train.validation import Validator

CURVES = "curves.png"


class DivergedError(OmnitokError):
    """The training loss is not finite (nan or inf)."""


class Recorder(pl.Callback):
    def __init__(self, run: Path, config: TrainConfig, args: ModelArgs,
                 tokenizers: TokenizerBundle, state: TrainState,
                 validator: Validator | None = None) -> None:
        self.run, self.config, self.args, self.tokenizers = Path(run), config, args, tokenizers
        self.state, self.validator = state, validator
        self.first: dict[str, float] | None = None  # metrics of the first logged step
        self.last: dict[str, float] | None = None  # metrics of the last logged step
        self.val_first: dict[str, float] | None = None  # first and last rows with val_loss
        self.val_last: dict[str, float] | None = None
        self._val: dict[str, float] = {}  # held-out figures for the next row
        self._saved, self._seen = state.step, 0
        self._pending: torch.Tensor | None = None  # stats since the last logged row
        self._pending_tokens, self._pending_seconds = 0, 0.0
        self._writer: MetricsWriter | None = None
        self._tick = 0.0

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self._writer = MetricsWriter(self.run)
        self._seen = trainer.global_step
        self._tick = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs,
                           batch, batch_idx: int) -> None:
        if trainer.global_step == self._seen:
            return  # accumulating gradients: no optimizer step yet
        self._seen = trainer.global_step
        stats = module.pop_step_stats()
        now = time.perf_counter()
        tokens = int(stats[:len(GROUPS), 2].sum())
        self.state.step, self.state.data = module.step, module.data_state
        self.state.tokens += tokens
        self.state.seconds += now - self._tick
        self._pending = stats if self._pending is None else self._pending + stats
        self._pending_tokens += tokens
        self._pending_seconds += now - self._tick
        self._tick = now
        loss = summarize(stats)["loss"]
        if not math.isfinite(loss):
            self._diverged(trainer, module, loss)
        module.log("loss", loss, prog_bar=True, logger=False)
        step, c = self.state.step, self.config
        save = step % c.checkpoint_every == 0
        validate = self.validator is not None and (step % c.val_every == 0
                                                   or step >= c.max_steps)
        if validate:
            self._val = self.validator(trainer, module)
        if save or validate or step % c.log_every == 0 or step == 1:
            self._log_row(trainer, module)
        if save:
            self._save(trainer, module)
        self._tick = time.perf_counter()  # checkpoint time is not training time

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self._pending is not None:
            self._log_row(trainer, module)
        if self.state.step != self._saved:
            self._save(trainer, module)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            rows = read_log(self.run / METRICS)
            title = f"{self.run.name}: {self.args.num_params() / 1e6:.2f}M parameters"
            plot_curves(rows, self.run / CURVES, title)

    def _diverged(self, trainer: pl.Trainer, module: pl.LightningModule, loss: float) -> None:
        """Record the step and stop: nothing of this run's weights after it is saved."""
        self._log_row(trainer, module)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        where = f"step {self._saved}, {self.run / 'last'}" if self._saved else "none yet"
        hint = "train without --compile, or " if self.config.compile else ""
        raise DivergedError(f"the training loss is {loss} at step {self.state.step}: stopped "
                            f"without saving (last checkpoint: {where}); {hint}lower --lr")

    def _log_row(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        metrics = summarize(self._pending)
        row = {"step": self.state.step, **metrics, "lr": module.current_lr(),
               "tokens": self.state.tokens, "seconds": self.state.seconds,
               "tokens_per_s": self._pending_tokens / max(self._pending_seconds, 1e-9),
               **self._val}
        if self._val:
            self.val_first, self.val_last = self.val_first or row, row
        self._pending, self._pending_tokens, self._pending_seconds = None, 0, 0.0
        self._val = {}
        self.first = self.first or row
        self.last = row
        if self._writer is not None:
            self._writer.write(row)

    def _save(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        weights = full_weights(trainer.strategy)
        optimizer = full_optimizer_state(trainer.strategy, module.optimizers().optimizer)
        scheduler = module.lr_schedulers().state_dict()
        if trainer.is_global_zero:
            save_train_checkpoint(
                self.run, self.state, self.args, weights, self.tokenizers,
                {"optimizer": optimizer, "scheduler": scheduler},
                {"trained_on": self.config.data}, keep=self.config.keep_checkpoints)
        trainer.strategy.barrier()
        self._saved = self.state.step
