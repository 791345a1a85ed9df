"""Safetensors checkpoints read and written one tensor at a time.

safetensors' own `save_file` needs every tensor of a file in memory at once. A file's header
only needs each tensor's dtype and shape, known before any weight is computed, so a writer can
put the header first and then stream the tensors in, holding one at a time.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from models.errors import LoraflowError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


class ShardError(LoraflowError):
    """A checkpoint file that is missing or not readable as safetensors; names the file."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a checkpoint: its name, dtype and shape, and the file it lives in."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    source: Path

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * self.dtype.itemsize


def checkpoint_files(root: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory: the index's shards, or the one file."""
    if (root / INDEX).is_file():
        names = sorted(set(json.loads((root / INDEX).read_text())["weight_map"].values()))
        return [root / name for name in names]
    if (root / SINGLE).is_file():
        return [root / SINGLE]
    raise ShardError(f"{root}: neither {SINGLE} nor {INDEX}; loraflow reads safetensors only")


def read_header(path: Path) -> list[TensorInfo]:
    """The tensors of one safetensors file, in the order of their bytes (no data is read)."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError) as e:
        raise ShardError(f"{path}: not a readable safetensors file ({e})") from None
    header.pop("__metadata__", None)
    ordered = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
    return [TensorInfo(k, DTYPES[v["dtype"]], tuple(v["shape"]), path) for k, v in ordered]


def plan_shards(tensors: list[TensorInfo], max_bytes: int) -> dict[str, list[TensorInfo]]:
    """Output file name -> its tensors, filled in order up to max_bytes each (a tensor larger
    than max_bytes gets a file of its own), named the way transformers names shards."""
    shards: list[list[TensorInfo]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    if len(shards) == 1:
        return {SINGLE: shards[0]}
    n = len(shards)
    return {f"model-{i + 1:05d}-of-{n:05d}.safetensors": s for i, s in enumerate(shards)}


def write_index(out_dir: Path, shards: dict[str, list[TensorInfo]]) -> Path | None:
    """model.safetensors.index.json for a sharded checkpoint (None for a single file)."""
    if len(shards) == 1:
        return None
    weight_map = {t.name: name for name, tensors in shards.items() for t in tensors}
    total = sum(t.nbytes for tensors in shards.values() for t in tensors)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    path = out_dir / INDEX
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path


class ShardWriter:
    """Writes one safetensors file whose tensors (names, dtypes, shapes) are known up front:
    the header first, then each tensor's bytes as `write` receives it, in the planned order."""

    def __init__(self, path: Path, tensors: list[TensorInfo]):
        header, offset = {}, 0
        for t in tensors:
            header[t.name] = {
                "dtype": DTYPE_NAMES[t.dtype],
                "shape": list(t.shape),
                "data_offsets": [offset, offset + t.nbytes],
            }
            offset += t.nbytes
        header["__metadata__"] = {"format": "pt"}
        body = json.dumps(header, separators=(",", ":")).encode()
        body += b" " * (-len(body) % 8)  # the format pads the header to 8 bytes
        self.path = path
        self.pending = list(tensors)
        self.file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.file.write(struct.pack("<Q", len(body)) + body)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected = self.pending.pop(0)
        if (name, tensor.dtype, tuple(tensor.shape)) != (
            expected.name,
            expected.dtype,
            expected.shape,
        ):
            raise ValueError(f"{self.path}: got {name} {tensor.dtype}, planned {expected}")
        # The tensor's own memory, written without a bytes copy.
        self.file.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())

    def close(self) -> None:
        self.file.close()
        if self.pending:
            raise ValueError(f"{self.path}: {len(self.pending)} planned tensor(s) never written")
