"""omnitok: codec-token, unified, any-to-any autoregressive models."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__version__ = "0.1.0"


class OmnitokError(Exception):
    """An error caused by the user's input (a file, a flag, a checkpoint).

    The CLI prints its message as one line and exits non-zero; anything else is a bug.
    """


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`.

    A crash or an exception leaves the previous `path` (if any) untouched and no temporary
    file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` as a whole.

    Readers see either the old folder or the complete new one, never a mixture.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    old = tmp.with_suffix(".old")
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old.exists():
                os.replace(old, path)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_json_object(path: str | os.PathLike, error: type[Exception] = OmnitokError,
                     missing: str = "no such file") -> dict:
    """The JSON object in `path`; a missing file, bad JSON or a non-object raise `error`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data


def dataclass_from_dict(cls: type, d: dict, error: type[Exception], what: str,
                        derived: tuple[str, ...] = ()):
    """`cls(**d)` for a config dataclass; unknown keys or bad values raise `error` in one line.

    `derived` names keys written by `to_dict` that the constructor computes itself (ignored).
    """
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - names - set(derived))
    if unknown:
        raise error(f"unknown {what} config keys: {', '.join(unknown)}")
    try:
        return cls(**{k: v for k, v in d.items() if k in names})
    except error:
        raise
    except (TypeError, ValueError) as e:
        raise error(f"malformed {what} config: {e}") from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def native_bf16(device: str = "cpu") -> bool:
    """Whether bfloat16 math is fast on `device`: always on CUDA; on the CPU only with native
    bf16 instructions (AVX-512 BF16 / AMX). Elsewhere torch emulates it, many times slower."""
    import torch

    if torch.device(device).type == "cuda":
        return True
    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
