"""Lightning strategies for one device or many (DDP, FSDP) and the state that crosses them.

Checkpoints always hold full tensors: under FSDP the weights and the optimizer state are
gathered to rank 0 before they are written, and scattered again when a run resumes, so a run
may resume under another strategy (with the same number of ranks, which the data order needs).
"""

from __future__ import annotations

import torch

from omnitok.model.transformer import Block
from omnitok.train.config import TrainConfig


def make_strategy(config: TrainConfig):
    """The Lightning strategy for `config.strategy` ("auto": one device, or DDP for more)."""
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    if config.strategy == "fsdp":
        policy = {Block}
        return FSDPStrategy(auto_wrap_policy=policy, state_dict_type="full",
                            activation_checkpointing_policy=policy
                            if config.activation_checkpointing else None,
                            use_orig_params=True)
    if config.strategy == "ddp" or config.world_size > 1:
        return DDPStrategy()
    return "auto"


def full_weights(strategy, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The model's full state dict (gathered under FSDP; call on every rank), without the
    LightningModule's `prefix`."""
    state = strategy.lightning_module_state_dict()
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def full_optimizer_state(strategy, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state dict in the plain (parameter-index keyed) form; call on every
    rank (only rank 0's is complete under FSDP)."""
    return strategy.optimizer_state(optimizer)


def load_optimizer_state(strategy, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a plain optimizer state dict, sharding it first under FSDP."""
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(strategy, FSDPStrategy):
        optimizer.load_state_dict(state)
        return
    from lightning.fabric.strategies.fsdp import _get_full_state_dict_context
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import OptimStateKeyType

    model = strategy.model
    with _get_full_state_dict_context(model, world_size=strategy.world_size, rank0_only=False):
        state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_NAME, model)
        optimizer.load_state_dict(FSDP.optim_state_dict_to_load(
            optim_state_dict=state, model=model, optim=optimizer))
