"""`omnitok tokenize`: pre-tokenize a corpus manifest into shards (train/pretokenize.py);
`omnitok train`: train the model on them (train/run.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal


def tokenize_command(manifest: Path, *, tokenizer: Path, out: Path, workers: int = 1,
                     lines_per_shard: int = 2048, strict: bool = False,
                     progress: bool = True) -> None:
    """Pre-tokenize a corpus manifest into shards of unified-vocabulary ids.

    Parallel (--workers), resumable (a rerun keeps finished shards) and deterministic (the
    same input gives byte-identical shards for any number of workers). Bad manifest lines,
    unreadable media files and empty texts are skipped and counted (--strict fails instead).

    Args:
        manifest: JSONL corpus manifest (one document of text/image/audio segments per line).
        tokenizer: tokenizer folder (text.model, image/, audio/, or a checkpoint folder).
        out: shard folder to create or resume.
        workers: processes encoding shards in parallel (each uses one thread).
        lines_per_shard: manifest lines per shard (the unit of resuming and of parallel work).
        strict: stop at the first bad line or unreadable document instead of skipping it.
        progress: show a progress bar (on a terminal).
    """
    from omnitok.train.pretokenize import tokenize_corpus

    summary = tokenize_corpus(manifest, tokenizer, out, workers=workers,
                              lines_per_shard=lines_per_shard, strict=strict, progress=progress)
    print(summary.line())
    for reason, example in sorted(summary.examples.items()):
        print(f"  skipped ({reason}), e.g. {example}")


Precision = Literal["32", "bf16"]
Strategy = Literal["auto", "ddp", "fsdp"]
Freeze = Literal["backbone", "embeddings", "text", "image-codes"]


def train_command(*, data: Path, out: Path, mix: list[str] | None = None,
                  model: str | None = None, init: Path | None = None, resume: bool = False,
                  tokenizer: Path | None = None, max_steps: int = 1000,
                  batch_size: int = 8, seq_len: int = 512, accumulate: int = 1,
                  lr: float = 3e-4, min_lr: float = 3e-5, warmup_steps: int = 100,
                  weight_decay: float = 0.1, grad_clip: float = 1.0,
                  z_loss: float | None = None, precision: Precision = "32",
                  compile: bool = False, activation_checkpointing: bool = False,
                  freeze: list[Freeze] | None = None, codebook_init: bool = False,
                  image_positions: bool = False, image_neighbours: bool = False,
                  image_summary: str = "pool",
                  condition_dropout: float = 0.0,
                  modality_dropout: float = 0.0, text_weight: float = 1.0,
                  image_weight: float = 1.0, audio_weight: float = 1.0,
                  special_weight: float = 1.0, condition_weight: float = 1.0,
                  audio_levels: list[float] | None = None,
                  seed: int = 0, checkpoint_every: int = 500, keep_checkpoints: int = 2,
                  log_every: int = 10, devices: int = 1, num_nodes: int = 1,
                  strategy: Strategy = "auto", accelerator: str = "auto", workers: int = 0,
                  threads: int | None = None, attn: str | None = None,
                  val_data: Path | None = None, val_every: int = 250, val_rows: int = 64,
                  progress: bool = True) -> None:
    """Train the unified model on pre-tokenized shards (or fine-tune, or resume a run).

    Writes OUT/train.json (settings), OUT/metrics.csv (loss and accuracy per modality, and
    the held-out loss with --val-data), OUT/curves.png (drawn at the end),
    OUT/checkpoints/step-N/ every --checkpoint-every steps (omnitok checkpoints plus optimizer
    and data-order state) and OUT/last (the newest).

    Args:
        data: shard folder made by `omnitok tokenize`.
        out: run folder.
        mix: more shard folders (same tokenizer) trained on with --data, as FOLDER:REPEATS:
            each of its documents REPEATS times per pass over --data (a fraction takes a
            seeded share of them; e.g. shards_img:2 shards_speech:0.5).
        model: model preset (debug, tiny, small, ...); default tiny, or the --init checkpoint's.
        init: omnitok checkpoint to start from (fine-tuning; e.g. from `omnitok convert hf`).
        resume: continue the run in --out from its last checkpoint (same data order, same curve).
        tokenizer: tokenizer folder to save with every checkpoint (default: --init's, or the
            vocabulary only).
        max_steps: optimizer steps of the whole run (the cosine schedule ends there).
        batch_size: packed rows per device per micro-batch.
        seq_len: row length in tokens.
        accumulate: micro-batches per optimizer step (gradient accumulation).
        lr: peak learning rate (AdamW).
        min_lr: learning rate at the end of the cosine.
        warmup_steps: linear warmup steps.
        weight_decay: AdamW weight decay of matrices (not norms, not row-frozen tensors).
        grad_clip: clip the gradient norm to this (0: no clipping).
        z_loss: weight of the z-loss (log Z)^2 (default: the model config's).
        precision: 32 (float32) or bf16 (bfloat16 autocast, float32 weights).
        compile: torch.compile the model.
        activation_checkpointing: recompute each block's activations in the backward pass.
        freeze: keep weights fixed: backbone (blocks + final norm), embeddings (input
            embedding + head), text (everything except the embedding and head rows of
            non-text ids), image-codes (the input embedding rows of image codes; with
            --codebook-init the model sees each code as its projected codebook vector).
        codebook_init: start a fresh model's image and audio embeddings from the
            tokenizers' codebooks (needs --tokenizer; not with --init).
        image_positions: give the model learned row and column embeddings of image codes
            (2-D positions beside the 1-D RoPE); with --init they are added, starting at zero.
        image_neighbours: also give the model a local reader of image grids: the
            tokenizer's codebook vectors of each code and its neighbours (up-left, up,
            up-right, two right of up, left) through an MLP, and their maximum over the image
            at its <eoi>; implies --image-positions; with --init it starts at zero.
        image_summary: what the image reader passes to an image's <eoi> (with
            --image-neighbours): pool (the maximum of its units over the image) or cnn (three
            3x3 convolutions over the image's grid of codebook vectors, max-pooled).
        condition_dropout: probability of replacing a document's conditioning segments by
            <uncond> (classifier-free guidance).
        modality_dropout: probability of dropping each non-target segment.
        text_weight: loss weight of text targets.
        image_weight: loss weight of image-code targets.
        audio_weight: loss weight of audio-code targets.
        special_weight: loss weight of <eos>, image/audio markers and grid tokens.
        condition_weight: extra loss weight of targets inside a document's conditioning
            segments (all but the last); 0 trains only the target given its conditions.
        audio_levels: extra loss weight per RVQ level (one number per level).
        seed: seed of the initial weights, the data order and dropout.
        checkpoint_every: steps between checkpoints.
        keep_checkpoints: how many step checkpoints to keep.
        log_every: steps per row of metrics.csv (the row averages them).
        devices: devices (processes) per node.
        num_nodes: nodes.
        strategy: auto (one device; DDP for more), ddp or fsdp.
        accelerator: auto, cpu or gpu.
        workers: DataLoader worker processes per device.
        threads: torch threads per process (default: torch's choice).
        attn: attention backend (sdpa, triton, flash; default: the device's).
        val_data: held-out shard folder (`omnitok tokenize` of held-out documents, same
            tokenizer): metrics.csv gets its loss (val_loss, val_loss_<modality>).
        val_every: steps between held-out losses (and one at the last step).
        val_rows: packed rows of --val-data scored each time.
        progress: show a progress bar.
    """
    from omnitok.train.config import TrainConfig
    from omnitok.train.run import is_rank_zero, train

    weights = {"text": text_weight, "image": image_weight, "audio": audio_weight,
               "special": special_weight, "condition": condition_weight}
    config = TrainConfig(
        data=str(data), out=str(out), mix=list(mix or []), model=model,
        init=str(init) if init else None, resume=resume,
        tokenizer=str(tokenizer) if tokenizer else None, max_steps=max_steps,
        batch_size=batch_size, seq_len=seq_len, accumulate=accumulate, lr=lr, min_lr=min_lr,
        warmup_steps=warmup_steps, weight_decay=weight_decay, grad_clip=grad_clip,
        z_loss=z_loss, precision=precision, compile=compile,
        activation_checkpointing=activation_checkpointing, freeze=list(freeze or []),
        codebook_init=codebook_init, image_positions=image_positions or image_neighbours,
        image_neighbours=image_neighbours, image_summary=image_summary,
        condition_dropout=condition_dropout, modality_dropout=modality_dropout,
        loss_weights=weights, audio_levels=list(audio_levels or []), seed=seed,
        checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
        log_every=log_every, devices=devices, num_nodes=num_nodes, strategy=strategy,
        accelerator=accelerator, workers=workers, threads=threads, progress=progress,
        attn=attn, val_data=str(val_data) if val_data else None, val_every=val_every,
        val_rows=val_rows)
    summary = train(config)
    if is_rank_zero():
        print("\n".join(summary.lines()))
