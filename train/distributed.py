"""Lightning strategies for one device or many (DDP, FSDP) and the state that crosses them.

Checkpoint weights are always full tensors (gathered to rank 0 under FSDP), so any run can
start from them (`--init`). The optimizer state is written as the strategy holds it: one plain
state dict for one device or DDP; under FSDP, each rank's own shard (gathered to rank 0 as a
list), which a resumed run loads back on the same rank. A run resumes under the strategy and
the number of ranks it was started with (the data order needs the same ranks anyway).
"""

from __future__ import annotations

import torch

from omnitok.model.transformer import Block
from omnitok.train.config import TrainConfig, TrainConfigError


def make_strategy(config: TrainConfig):
    """The Lightning strategy for `config.strategy` ("auto": one device, or DDP for more)."""
    from lightning.pytorch.strategies import DDPStrategy

    if config.strategy == "fsdp":
        policy = {Block}
        return _fsdp_class()(auto_wrap_policy=policy, state_dict_type="full",
                            activation_checkpointing_policy=policy
                            if config.activation_checkpointing else None,
                            use_orig_params=True)
    if config.strategy == "ddp" or config.world_size > 1:
        return DDPStrategy()
    return "auto"


def _fsdp_class():
    """Lightning's FSDPStrategy; its accelerator check (CUDA only) matches the exact class, so
    a subclass also runs on CPU processes over gloo, which torch's FSDP supports."""
    from lightning.pytorch.strategies import FSDPStrategy
    from lightning.pytorch.strategies.fsdp import _setup_activation_checkpointing
    from torch.distributed.fsdp import FullyShardedDataParallel

    class CPUCapableFSDP(FSDPStrategy):
        def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
            if self.root_device.type != "cpu":
                return super()._setup_model(model)
            # Lightning passes device_id=None on the CPU, which torch's FSDP refuses
            model = FullyShardedDataParallel(
                module=model, cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"),
                **self.kwargs)
            _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
            return model

    return CPUCapableFSDP


def full_weights(strategy, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The model's full state dict (gathered under FSDP; call on every rank), without the
    LightningModule's `prefix`."""
    state = strategy.lightning_module_state_dict()
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def full_optimizer_state(strategy, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state to checkpoint; call on every rank (rank 0's return is complete).

    Under FSDP every rank's local (sharded) state dict, gathered to rank 0 as a list.
    """
    if not _is_fsdp(strategy):
        return strategy.optimizer_state(optimizer)
    import torch.distributed as dist

    local = _to_cpu(optimizer.state_dict())
    shards = [None] * strategy.world_size if strategy.global_rank == 0 else None
    dist.gather_object(local, shards, dst=0)
    return {FSDP_SHARDS: shards}


def load_optimizer_state(strategy, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load what `full_optimizer_state` wrote, on the same strategy and number of ranks."""
    shards = state.get(FSDP_SHARDS)
    if _is_fsdp(strategy) != (shards is not None):
        was, now = ("fsdp", "ddp or one device") if shards is not None else ("ddp or one "
                                                                             "device", "fsdp")
        raise TrainConfigError(f"the checkpoint's optimizer state was written under {was}, "
                               f"this run uses {now}: resume with the strategy the run began "
                               "with, or start a new run from its weights with --init")
    if shards is None:
        optimizer.load_state_dict(state)
        return
    if len(shards) != strategy.world_size:
        raise TrainConfigError(f"the checkpoint's optimizer state is sharded over {len(shards)} "
                               f"FSDP ranks, this run has {strategy.world_size}")
    optimizer.load_state_dict(shards[strategy.global_rank])


FSDP_SHARDS = "fsdp_rank_shards"


def _is_fsdp(strategy) -> bool:
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy)


def _to_cpu(value):
    if torch.is_tensor(value):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value
