"""Image files <-> tensors for the image tokenizer, and the image paths of a corpus.

`load_image` policy (any image Pillow can decode becomes a (3, size, size) float tensor):
1. The file is decoded completely (a truncated or non-image file raises ImageTokenizerError
   naming the file), then its EXIF orientation is applied.
2. Colour: 16-bit / 32-bit integer greyscale ("I;16*", "I") is read as 0..65535 (values
   outside are clipped) and scaled to 8 bits; "F" is read as 0..255 (clipped). Anything with
   transparency (an alpha channel: RGBA, LA, PA, ...; or a palette/tRNS transparent colour) is
   composited over an opaque WHITE background, so a fully transparent pixel becomes white.
   Everything else (palette, greyscale, 1-bit, CMYK, YCbCr, ...) is converted by Pillow to RGB.
3. Geometry: resized (Lanczos, which antialiases when shrinking) so that the SHORTER side is
   `size`, then center-cropped to size x size (for odd margins the extra pixel is dropped on the
   right / bottom). An image whose shorter side is already `size` is only cropped, not resampled.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from omnitok import OmnitokError, atomic_path
from omnitok.train.manifest import ManifestError, ManifestStats, media_files

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageTokenizerError(OmnitokError, ValueError):
    """A bad image, code grid, config or tokenizer folder (the message names which)."""


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, TypeError, KeyError, IndexError,
                  Image.DecompressionBombError, UnidentifiedImageError)


def load_image(source: str | os.PathLike | Image.Image, size: int) -> Tensor:
    """An image file (or PIL image) -> (3, size, size) float32 in [0, 1], by the policy above."""
    if size < 1:
        raise ImageTokenizerError(f"image size must be >= 1, got {size}")
    pil = isinstance(source, Image.Image)
    name = (getattr(source, "filename", "") or "<PIL image>") if pil else str(source)
    try:
        img = ImageOps.exif_transpose(source) if pil else _open(source)
        rgb = _crop_resize(_to_rgb(img), size)
    except ImageTokenizerError:
        raise
    except _DECODE_ERRORS as e:
        raise ImageTokenizerError(f"{name}: cannot decode image ({_one_line(e)})") from None
    arr = np.asarray(rgb, dtype=np.uint8)  # (size, size, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255


def _open(path: str | os.PathLike) -> Image.Image:
    if not Path(path).is_file():
        raise ImageTokenizerError(f"{path}: no such image file")
    with Image.open(path) as img:
        img.load()  # force the full decode: truncation surfaces here, not later
        return ImageOps.exif_transpose(img)  # a new image, EXIF orientation applied


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode -> RGB; alpha composited over white; high-bit-depth greyscale scaled to 8 bits."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        top = 255.0 if img.mode == "F" else 65535.0
        arr = np.asarray(img, dtype=np.float64)
        grey = np.rint(np.clip(arr, 0, top) * (255.0 / top)).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _crop_resize(img: Image.Image, size: int) -> Image.Image:
    """Shorter side -> size (Lanczos), then the centered size x size crop."""
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageTokenizerError("empty image")
    if min(w, h) != size:
        scale = size / min(w, h)
        w, h = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((w, h), Image.Resampling.LANCZOS)
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def save_image(image: Tensor, path: str | os.PathLike) -> None:
    """Write a (3, H, W) float tensor in [0, 1] as an 8-bit RGB PNG, atomically.

    Values are clamped to [0, 1] and rounded to the nearest of 256 levels; NaN raises.
    """
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3 \
            or not image.is_floating_point():
        raise ImageTokenizerError(f"save_image needs a float (3, H, W) tensor, got "
                                  f"{getattr(image, 'dtype', type(image))} "
                                  f"{tuple(getattr(image, 'shape', ()))}")
    if torch.isnan(image).any():
        raise ImageTokenizerError(f"{path}: the image contains NaN")
    arr = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    pil = Image.fromarray(arr.permute(1, 2, 0).numpy(), mode="RGB")
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG")


# ---- corpora --------------------------------------------------------------------------------
def find_images(sources: list[str | os.PathLike]) -> tuple[list[Path], ManifestStats]:
    """Image files named by JSONL manifests, found in folders, or given directly (each once).

    Manifest paths are relative to the manifest's folder and may not leave it; bad lines are
    skipped and counted in the returned stats (see omnitok.train.manifest).
    """
    try:
        return media_files(list(sources), "image", IMAGE_SUFFIXES)
    except ManifestError as e:
        raise ImageTokenizerError(str(e)) from None


def decode_images(paths: list[Path], size: int) -> tuple[Tensor, list[tuple[Path, str]]]:
    """Decode every path once -> ((N, 3, size, size) uint8, [(path, why) for those skipped])."""
    images, failed = [], []
    for path in paths:
        try:
            images.append((load_image(path, size) * 255).round().to(torch.uint8))
        except ImageTokenizerError as e:
            failed.append((path, str(e)))
    if not images:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8), failed
    return torch.stack(images), failed
