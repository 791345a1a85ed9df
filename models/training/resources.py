"""Out of memory and out of disk while training, as one-line errors naming what ran out."""

from __future__ import annotations

import errno
import functools
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from models.errors import LoraflowError

T = TypeVar("T")

# How the allocators word it: torch.OutOfMemoryError (CUDA), the CPU allocator's RuntimeError,
# safetensors' Rust errors ("No space left on device (os error 28)").
_OOM_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory")
_DISK_WORDS = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")


class ResourceError(LoraflowError):
    """Memory or disk ran out; the message names the device or path and what to change."""


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return None


def out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError, MemoryError, or an allocator's 'cannot allocate' error."""
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(error, RuntimeError) and any(w in str(error).lower() for w in _OOM_WORDS)


def out_of_disk(error: BaseException) -> bool:
    """ENOSPC/EDQUOT from the kernel, or a library's error that carries that message."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(w in str(error).lower() for w in _DISK_WORDS)


def explain_resource_errors(
    fn: Callable[..., T], *, device: str, output_dir: str, batch_size: int, max_seq_len: int
) -> Callable[..., T]:
    """`fn` (a training call) with running out of memory or disk raised as ResourceError."""

    @functools.wraps(fn)
    def guarded(*args, **kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if out_of_memory(e):
                where = (
                    device if device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
                )
                raise ResourceError(
                    f"out of memory on {where} while training ({type(e).__name__}): lower "
                    f"training.batch_size (now {batch_size}) or data.max_seq_len (now "
                    f"{max_seq_len}); training.grad_accum_steps keeps the effective batch"
                ) from e
            if out_of_disk(e):
                path = Path(getattr(e, "filename", None) or output_dir)
                free = _free_bytes(Path(output_dir))
                left = f"{free / 2**20:.1f} MiB free" if free is not None else "free space unknown"
                raise ResourceError(
                    f"disk full writing {path} ({left} on that filesystem): free space there "
                    "or point training.output_dir at another disk"
                ) from e
            raise

    return guarded
