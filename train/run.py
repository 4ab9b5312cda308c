"""One training run from a TrainConfig: where the weights come from (a preset, `--init`, or
the run's last checkpoint with `--resume`), the Lightning Trainer, and the summary.

Under a multi-process strategy Lightning starts the other ranks by running the same command
again; only global rank 0 checks and writes the run folder (`is_rank_zero`).
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from omnitok import OmnitokError, native_bf16
from omnitok.model.checkpoint import load_checkpoint
from omnitok.model.config import ImageNeighbours, ImagePositions, ModelArgs
from omnitok.model.image_positions import image_positions_for
from omnitok.model.transformer import IMAGE_NEIGHBOUR_WEIGHTS, IMAGE_POSITION_WEIGHTS, Transformer
from omnitok.tokenizers.bundle import TokenizerBundle
from omnitok.tokenizers.vocab import Vocab
from omnitok.train.callbacks import CURVES
from omnitok.train.config import (
    PRECISIONS,
    TrainConfig,
    TrainConfigError,
    check_resume,
    save_config,
)
from omnitok.train.embeddings import codebook_embeddings
from omnitok.train.freeze import ROW_FREEZES
from omnitok.train.logs import METRICS, truncate_log
from omnitok.train.mix import ShardMix, parse_mix
from omnitok.train.objective import GROUPS
from omnitok.train.shards import TokenShards
from omnitok.train.state import (
    CHECKPOINTS,
    LAST,
    TrainState,
    check_checkpoint_vocab,
    latest_checkpoint,
    load_train_state,
)

ARCHITECTURE = ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "intermediate_size",
                "qk_norm", "tie_embeddings")
RUN_CONFIG = "train.json"


class TrainError(OmnitokError):
    """A run folder, data folder or checkpoint that this run cannot use."""


@dataclass
class Start:
    """Where a run starts: its model, tokenizers, state and optimizer state (when resuming)."""

    model: Transformer
    tokenizers: TokenizerBundle
    state: TrainState
    optimizer: dict | None = None
    source: str = "preset"


def is_rank_zero() -> bool:
    """False in the processes Lightning starts for the other ranks and nodes."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def open_shards(folder: str) -> TokenShards:
    if not Path(folder).is_dir():
        raise TrainError(f"{folder}: no such shard folder (make one with `omnitok tokenize`)")
    return TokenShards(folder)


def open_training_data(config: TrainConfig) -> TokenShards | ShardMix:
    """--data's shards, or with --mix the mix of --data (once) and the --mix folders."""
    shards = open_shards(config.data)
    if not config.mix:
        return shards
    entries = [parse_mix(e) for e in config.mix]
    mix = ShardMix([shards, *(open_shards(e.folder) for e in entries)],
                   [1.0, *(e.repeats for e in entries)], seed=config.seed)
    if is_rank_zero():
        print(mix.summary(), flush=True)
    return mix


def model_args(config: TrainConfig, tokenizers: TokenizerBundle) -> ModelArgs:
    """A preset's ModelArgs for a fresh model, long enough for `config.seq_len`."""
    vocab = tokenizers.vocab
    args = ModelArgs.from_name(config.model or "tiny", vocab_size=vocab.padded_size)
    layout = image_layout(vocab) if config.image_positions else None
    near = image_reader(tokenizers, config.image_summary) if config.image_neighbours else None
    return args.replace(max_seq_len=max(args.max_seq_len, config.seq_len),
                        image_positions=layout, image_neighbours=near)


def image_reader(tokenizers: TokenizerBundle, summary: str = "pool") -> ImageNeighbours:
    """The local image reader for `tokenizers`' image codebook."""
    if tokenizers.image is None:
        raise TrainError("--image-neighbours reads the image tokenizer's codebook: pass "
                         "--tokenizer with the bundle the shards were made with")
    return ImageNeighbours(code_dim=tokenizers.image.codebook.shape[1], summary=summary)


def copy_image_codebook(model: Transformer, tokenizers: TokenizerBundle) -> None:
    """Fill a model's frozen copy of the image codebook from its tokenizer."""
    book = tokenizers.image.codebook.detach().float()
    if book.shape != model.image_codebook.shape:
        raise TrainError(f"the image tokenizer's codebook {tuple(book.shape)} does not fit the "
                         f"model's image range {tuple(model.image_codebook.shape)}")
    with torch.no_grad():
        model.image_codebook.copy_(book)


def image_layout(vocab: Vocab) -> ImagePositions:
    try:
        return image_positions_for(vocab)
    except ValueError as e:
        raise TrainError(f"--image-positions: {e}") from None


def with_image_inputs(model: Transformer, tokenizers: TokenizerBundle,
                      neighbours: str | None) -> Transformer:
    """`model` with row and column embeddings of image codes (and with `neighbours`, a
    summary kind, the local image reader) added where it lacks them, at zero: the same
    function until training moves them."""
    args = model.args
    grown_args = args.replace(
        image_positions=args.image_positions or image_layout(tokenizers.vocab),
        image_neighbours=args.image_neighbours or (image_reader(tokenizers, neighbours)
                                                   if neighbours else None))
    grown = Transformer(grown_args, attn_backend=model.attn_backend)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {*IMAGE_POSITION_WEIGHTS, *IMAGE_NEIGHBOUR_WEIGHTS}
    if args.image_neighbours is None and grown_args.image_neighbours is not None:
        copy_image_codebook(grown, tokenizers)
    return grown


def check_architecture(args: ModelArgs, config: TrainConfig, source: str) -> None:
    """A checkpoint must hold the preset asked for (when one is) and fit the rows."""
    if config.model is not None:
        want = ModelArgs.from_name(config.model)
        diff = [f"{k} {getattr(args, k)} != {getattr(want, k)}" for k in ARCHITECTURE
                if getattr(args, k) != getattr(want, k)]
        if diff:
            raise TrainError(f"{source} is not a {config.model!r} model ({', '.join(diff)})")
    if config.seq_len > args.max_seq_len:
        raise TrainError(f"--seq-len {config.seq_len} exceeds {source}'s max_seq_len "
                         f"{args.max_seq_len}")


def start_point(config: TrainConfig, shards: TokenShards | ShardMix, run: Path) -> Start:
    """The model and state this run starts from (see the module docstring)."""
    last = latest_checkpoint(run) if config.resume else None
    if last is None and is_rank_zero() and (run / RUN_CONFIG).exists() and not config.resume:
        raise TrainError(f"{run} already holds a run; pass --resume to continue it or choose "
                         "another --out")
    if last is not None or config.init is not None:
        if config.codebook_init and last is None:
            raise TrainError("--codebook-init sets a fresh model's embeddings; it does not go "
                             "with --init")
        folder = last or Path(config.init)
        ckpt = load_checkpoint(folder)
        check_checkpoint_vocab(folder, ckpt.tokenizers, shards.vocab)
        check_architecture(ckpt.model.args, config, str(folder))
        model = ckpt.model.float().train()
        tokenizers = _with_tokenizers(config, ckpt.tokenizers, shards)
        near = model.args.image_neighbours
        if config.image_neighbours and near is not None and near.summary != config.image_summary:
            raise TrainError(f"{folder}'s image reader has the {near.summary!r} summary, not "
                             f"--image-summary {config.image_summary!r}")
        if last is None:
            source = f"init {folder}"
            grow_positions = config.image_positions and model.args.image_positions is None
            grow_neighbours = config.image_neighbours and model.args.image_neighbours is None
            if grow_positions or grow_neighbours:
                summary = config.image_summary if config.image_neighbours else None
                model = with_image_inputs(model, tokenizers, summary).train()
                added = [what for what, grown in (("image row/column embeddings", grow_positions),
                                                  ("the image reader", grow_neighbours)) if grown]
                source += f", {' and '.join(added)} added"
            return Start(model, tokenizers, TrainState(), source=source)
        state, optimizer = load_train_state(last)
        return Start(model, tokenizers, state, optimizer, source=f"resume {last}")
    torch.manual_seed(config.seed)
    tokenizers = _with_tokenizers(config, TokenizerBundle(shards.vocab), shards)
    model = Transformer(model_args(config, tokenizers))
    if model.image_neighbours is not None:
        copy_image_codebook(model, tokenizers)
    source = f"preset {config.model or 'tiny'}"
    if config.codebook_init:
        ranges = codebook_embeddings(model, tokenizers, seed=config.seed)
        source += f", {'/'.join(ranges)} embeddings from their codebooks"
    return Start(model, tokenizers, TrainState(), source=source)


def _with_tokenizers(config: TrainConfig, bundle: TokenizerBundle,
                     shards: TokenShards | ShardMix) -> TokenizerBundle:
    """`--tokenizer`'s bundle when given (it must match the shards), else `bundle`."""
    if config.tokenizer is None:
        return bundle
    loaded = TokenizerBundle.load(config.tokenizer)
    if loaded.vocab != shards.vocab:
        raise TrainError(f"{config.tokenizer}: its vocabulary is not the one the shards in "
                         f"{config.data} were made with")
    return loaded


def prepare_run(config: TrainConfig, start: Start, run: Path) -> None:
    """Check a resumed run's settings; write train.json; drop log rows past the checkpoint."""
    if not is_rank_zero():
        return
    path, args = run / RUN_CONFIG, start.model.args.to_dict()
    if start.optimizer is not None:
        check_resume(config, path, args)
    if start.state.step >= config.max_steps:
        raise TrainError(f"{run} already trained {start.state.step} steps (--max-steps "
                         f"{config.max_steps}); raise --max-steps to go on")
    run.mkdir(parents=True, exist_ok=True)
    for stale in [*run.glob(f"{CHECKPOINTS}/.*.tmp*"), *run.glob(f".{LAST}.*.tmp")]:
        if stale.is_dir() and not stale.is_symlink():  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    save_config(config, path, args)
    if start.state.step == 0 and (run / METRICS).exists():
        (run / METRICS).unlink()
    truncate_log(run / METRICS, start.state.step)


def quiet_lightning() -> None:
    """Lightning's informational lines and advice meant for GPU clusters stay off the screen."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*LeafSpec.*"):
        warnings.filterwarnings("ignore", message=pattern)


def validate(config: TrainConfig) -> None:
    rows = [name for name in ROW_FREEZES if name in config.freeze]
    if config.strategy == "fsdp" and rows:
        raise TrainConfigError(f"--freeze {rows[0]} masks embedding rows, which FSDP shards; "
                               "use --strategy ddp")


@dataclass
class Summary:
    """What a run did: its first and last logged metrics and where it wrote."""

    run: Path
    first: dict | None
    last: dict | None
    source: str
    val_first: dict | None = None  # first and last rows with a held-out loss
    val_last: dict | None = None

    def lines(self) -> list[str]:
        if self.last is None:
            return [f"{self.run}: no step trained"]
        a, b = self.first, self.last
        parts = [f"loss {a['loss']:.3f} -> {b['loss']:.3f}"]
        for g in GROUPS:
            if f"loss_{g}" in a and f"loss_{g}" in b:
                parts.append(f"{g} {a[f'loss_{g}']:.3f} -> {b[f'loss_{g}']:.3f}")
        held_out = []
        if self.val_first is not None and self.val_last is not None:
            va, vb = self.val_first, self.val_last
            held_out = [f"held-out loss {va['val_loss']:.3f} (step {int(va['step'])}) -> "
                        f"{vb['val_loss']:.3f} (step {int(vb['step'])})"]
        return [f"steps {int(a['step'])}-{int(b['step'])} ({self.source}): " + ", ".join(parts),
                *held_out,
                f"{b['tokens_per_s']:,.0f} tokens/s; {int(b['tokens']):,} tokens in "
                f"{b['seconds']:.1f} s",
                f"checkpoint {self.run / LAST}, log {self.run / METRICS}, curves "
                f"{self.run / CURVES}"]


def train(config: TrainConfig) -> Summary:
    """Run (or resume) training as `config` says; returns the summary."""
    import lightning.pytorch as pl

    from omnitok.kernels import resolve_backend
    from omnitok.train.callbacks import Recorder
    from omnitok.train.datamodule import ShardDataModule
    from omnitok.train.distributed import make_strategy
    from omnitok.train.freeze import freeze
    from omnitok.train.module import OmnitokModule
    from omnitok.train.validation import Validator

    validate(config)
    if config.precision == "bf16" and not native_bf16(_device(config)) and is_rank_zero():
        print("note: this CPU has no native bfloat16 (AVX-512 BF16 / AMX): bf16 autocast is "
              "emulated and many times slower than --precision 32", flush=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    quiet_lightning()
    shards, run = open_training_data(config), Path(config.out)
    start = start_point(config, shards, run)
    prepare_run(config, start, run)
    model = start.model
    model.attn_backend = resolve_backend(config.attn, _device(config))
    masks = freeze(model, shards.vocab, config.freeze)
    module = OmnitokModule(model, shards.vocab, config, masks, start.state.step, start.optimizer)
    data = ShardDataModule(shards, config, start.state.data)
    validator = (Validator(open_shards(config.val_data), config, shards.vocab)
                 if config.val_data else None)
    recorder = Recorder(run, config, model.args, start.tokenizers, start.state, validator)
    trainer = pl.Trainer(
        accelerator=config.accelerator, devices=config.devices, num_nodes=config.num_nodes,
        strategy=make_strategy(config), precision=PRECISIONS[config.precision],
        max_steps=config.max_steps - start.state.step, max_epochs=1,  # one endless epoch
        accumulate_grad_batches=config.accumulate,
        logger=False, enable_checkpointing=False,
        enable_progress_bar=config.progress, enable_model_summary=False, callbacks=[recorder],
        use_distributed_sampler=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=str(run))
    trainer.fit(module, datamodule=data)
    return Summary(run, recorder.first, recorder.last, start.source, recorder.val_first,
                   recorder.val_last)


def _device(config: TrainConfig) -> str:
    gpu = config.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "cuda" if gpu else "cpu"
