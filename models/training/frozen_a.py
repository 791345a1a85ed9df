"""LoRA-FA's adapter path as one autograd function that keeps only what its gradients need.

An adapted linear layer computes y = W x + s B A drop(x), with W and A frozen (s = alpha / r).
Let m be the dropout's keep mask and h = s/(1-p) A (m * x), r values per token. Then

    grad B = g^T h                          (needs h: r values per token)
    grad x (adapter's share) = m * (s/(1-p) (g B) A)     (needs m: one bit per input value)

so the function saves h and m packed eight to a byte (pack_bits), and neither x nor drop(x).
PEFT's layers instead run nn.Dropout, whose noise tensor autograd keeps for every adapted
layer (on CPU a float copy the size of x; on CUDA a byte per value): q, k and v each keep
their own, which costs more than the rest of LoRA-FA's activations put together.

The path is installed as a PEFT LoRA variant, so the layers, their weights, the saved adapter
(a standard LoRA adapter) and merging stay PEFT's own; only the forward pass differs.
Device-agnostic: mask bits are packed with integer ops that run wherever torch does; under
autocast the path computes in the autocast dtype like the layers around it.
"""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import LoraLayer, LoraVariant

# pack_bits: 8 mask bytes (0/1) read as one little-endian int64 word, times GATHER, have their
# bits collected, without carries, in the top byte (reversed); SPREAD undoes it after the byte
# is copied into all eight bytes of a word (times 0x0101...).
_GATHER = 0x8040201008040201 - (1 << 64)  # as a signed int64
_SPREAD = 0x0102040810204080
_REPEAT = 0x0101010101010101


def keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """The dropout's keep mask: each value of x kept with probability 1 - p (bool, x's shape)."""
    return torch.rand(x.shape, device=x.device) >= p


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8, eight values per byte (padded with False to a multiple of 8)."""
    flat = mask.reshape(-1)
    pad = -flat.numel() % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    words = flat.view(torch.uint8).view(torch.int64)
    return ((words * _GATHER) >> 56).bitwise_and_(0xFF).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The bool tensor of `shape` that pack_bits packed."""
    words = (packed.to(torch.int64) * _REPEAT).bitwise_and_(_SPREAD)
    return words.view(torch.uint8)[: shape.numel()].view(shape) != 0


class _FrozenAPath(torch.autograd.Function):
    """s B A drop(x) with A frozen; saves h = s/(1-p) A drop(x) and the mask bits only."""

    @staticmethod
    def forward(ctx, x, a, b, p: float, scale: float):
        if p > 0:
            keep = keep_mask(x, p)
            h = (x * keep) @ a.T
            bits = pack_bits(keep)
            scale = scale / (1 - p)
        else:
            h = x @ a.T
            bits = None
        h.mul_(scale)
        ctx.save_for_backward(h, a, b, bits)
        ctx.scale, ctx.x_shape = scale, x.shape
        return h @ b.T

    @staticmethod
    def backward(ctx, grad):
        h, a, b, bits = ctx.saved_tensors
        grad_x = grad_b = None
        if ctx.needs_input_grad[2]:
            grad_b = grad.reshape(-1, grad.shape[-1]).T @ h.reshape(-1, h.shape[-1])
        if ctx.needs_input_grad[0]:
            grad_x = ((grad @ b).mul_(ctx.scale)) @ a
            if bits is not None:
                grad_x.mul_(unpack_bits(bits, ctx.x_shape))
        return grad_x, None, grad_b, None, None


def frozen_a_update(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: float, scale: float
) -> torch.Tensor:
    """s B A drop(x) (dropout probability p; 0 = none), with gradients for x and b only."""
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    return _FrozenAPath.apply(x.to(dtype), a.detach().to(dtype), b.to(dtype), p, scale)


def _dropout_p(layer: LoraLayer, adapter: str) -> float:
    dropout = layer.lora_dropout[adapter]
    return float(getattr(dropout, "p", 0.0)) if dropout.training else 0.0


class FrozenAPath(LoraVariant):
    """PEFT LoRA variant: the forward pass through frozen_a_update; merging as plain LoRA."""

    @staticmethod
    def init(module: LoraLayer, adapter_name: str, **kwargs) -> None:
        pass

    @staticmethod
    def merge_safe(module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor):
        return orig_weight + module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data += module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def unmerge(module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor):
        return orig_weight - module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def forward(module: LoraLayer, active_adapter: str, x, result, **kwargs):
        update = frozen_a_update(
            x,
            module.lora_A[active_adapter].weight,
            module.lora_B[active_adapter].weight,
            _dropout_p(module, active_adapter),
            module.scaling[active_adapter],
        )
        return result + update


def install(model: torch.nn.Module) -> int:
    """Route every adapted linear layer's LoRA path through FrozenAPath; returns how many."""
    from peft.tuners.lora import Linear

    layers = [m for m in model.modules() if isinstance(m, Linear)]
    for layer in layers:
        for adapter in layer.lora_A:
            layer.lora_variant[adapter] = FrozenAPath()
    return len(layers)
