"""The arithmetic of a merge: what one adapted layer adds to its base weight, computed with
exactly the operations of PEFT's `merge_and_unload` (so the results are bit-identical), in
buffers reused from layer to layer (models.export.merge streams the layers through them)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

# Per adapted layer, the working set: the fp32 weight, B A (scaled in place), the cast result.
FP32_COPIES = 3
# Rows merged together. Below torch's parallel grain (32,768 elements) each operation runs on
# the calling thread: on a shared CPU, handing every small operation to a second thread costs
# more than it saves (measured: 2-3x slower than one thread under load), and a block this size
# (128 KiB of fp32) stays in cache from the cast in to the cast out.
BLOCK_ELEMENTS = (1 << 15) - 1


@dataclass
class LayerUpdate:
    """What one adapted layer adds to its weight, with tensors in fp32 and PEFT's layout:
    A (r, in), B (out, r) for LoRA and DoRA (embeddings: A (r, vocab), B (dim, r)); VeRA's
    shared A, B with the layer's vectors d (r) and b (out)."""

    module: str
    a: torch.Tensor
    b: torch.Tensor
    scaling: float = 1.0
    magnitude: torch.Tensor | None = None  # DoRA
    lambda_d: torch.Tensor | None = None  # VeRA
    lambda_b: torch.Tensor | None = None  # VeRA
    transposed: bool = False  # weight stored (in, out): Conv1D, and the LoRA embedding's B A

    @property
    def plain(self) -> bool:
        """W + scaling * B A: LoRA and every variant but DoRA and VeRA."""
        return self.magnitude is None and self.lambda_d is None

    def product(self, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """B A in the weight's layout (LoRA, DoRA), in scratch when given."""
        shape = (self.b.shape[0], self.a.shape[1])
        out = None if scratch is None else scratch[: shape[0] * shape[1]].view(shape)
        product = torch.matmul(self.b, self.a, out=out)
        return product.T if self.transposed else product

    def apply(self, weight: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """The merged fp32 weight (`weight` is fp32 and may be changed in place), computed as
        PEFT's merge computes it, so the results are bit-identical. scratch: an fp32 buffer of
        at least weight.numel() elements for B A (else one is allocated)."""
        t = _transpose if self.transposed else _same
        if self.lambda_d is not None:  # VeRA: (b * B) (d * A) on the layer's slice of A and B
            out, inp = t(weight).shape
            scaled_b = self.lambda_b.unsqueeze(-1) * self.b[:out, :]
            scaled_a = self.lambda_d.unsqueeze(-1) * self.a[:, :inp]
            weight += t(scaled_b @ scaled_a)
            return weight
        # In place: the same roundings as PEFT's `weight += (B @ A) * scaling`, without
        # allocating (and page-faulting) two weight-sized temporaries per layer.
        delta = self.product(scratch).mul_(self.scaling)
        if self.magnitude is None:
            weight += delta
            return weight
        # DoRA: the magnitude vector over the row norms of the updated weight (PEFT computes
        # the norm in the (out, in) layout, with the update's scaling already in delta).
        norm = torch.linalg.norm(t(weight) + 1 * t(delta), dim=1).to(weight.dtype)
        factor = t((self.magnitude / norm).view(-1, 1))
        return factor * (weight + delta)


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


def _transpose(x: torch.Tensor) -> torch.Tensor:
    return x.T


class Workspace:
    """Buffers reused for every adapted weight, sized for the largest: the fp32 weight, B A
    and the cast result (FP32_COPIES). Allocating them afresh per layer costs a page fault per
    page of each, every layer, since large blocks go back to the system when freed."""

    def __init__(self, numel: int, target: torch.dtype):
        self.weight = torch.empty(numel, dtype=torch.float32)
        self.product = torch.empty(numel, dtype=torch.float32)
        self.result = torch.empty(numel, dtype=target)  # untouched if fp32

    def merged(
        self, tensor: torch.Tensor, updates: list[LayerUpdate], dtype: torch.dtype
    ) -> torch.Tensor:
        """The tensor with its updates applied, in dtype (a view of a buffer: use it before
        the next call)."""
        if not updates:
            return tensor if tensor.dtype == dtype else tensor.to(dtype)
        weight = self.weight[: tensor.numel()].view(tensor.shape)
        cast = dtype != torch.float32
        result = self.result[: tensor.numel()].view(tensor.shape) if cast else weight
        if len(updates) == 1 and updates[0].plain:
            # One pass over row blocks (BLOCK_ELEMENTS): cast in, add the scaled product,
            # cast out. Elementwise, so the same values as whole-tensor operations.
            update, delta = updates[0], updates[0].product(self.product)
            for rows in _row_blocks(tensor):
                block = weight[rows].copy_(tensor[rows])
                block += delta[rows].mul_(update.scaling)
                if cast:
                    result[rows].copy_(block)
            return result
        weight.copy_(tensor)
        for update in updates:
            weight = update.apply(weight, self.product)
        return result.copy_(weight) if cast else weight


def _row_blocks(tensor: torch.Tensor) -> Iterator[slice]:
    step = max(1, BLOCK_ELEMENTS // max(1, tensor[0].numel()))
    for start in range(0, tensor.shape[0], step):
        yield slice(start, start + step)
