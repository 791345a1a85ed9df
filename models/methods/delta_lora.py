"""Delta-LoRA (Zi et al., 2023): LoRA whose base weight also moves with the low-rank product.

After every optimizer step t -> t+1 each adapted base weight is updated by

    W <- W + c * (B_{t+1} A_{t+1} - B_t A_t)            (c = adapter.delta_scale)

The paper writes the same rule with lambda; c = lambda * alpha/r reproduces a paper setting that
includes LoRA's scaling. There is no dropout on the adapter path (the update assumes the product
B A is what the layer adds).

Saving: the updates telescope, W_T = W_0 + c * (B_T A_T - B_0 A_0), and B_0 = 0, so the trained
layer computes W_0 x + (alpha/r + c) * B_T A_T x. The adapter alone is therefore saved with
lora_alpha raised to alpha + c * r, and on the unmodified base it reproduces the trained model;
no base weights need to be stored.

Checkpoints: the moved base weights are part of the training state, so every Trainer checkpoint
also holds them (delta_lora_base.safetensors) and a resumed run puts them back; recomputing them
from the adapter would round differently and change the final bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.methods.base import AdapterMethod, AdapterSpec, build_lora

if TYPE_CHECKING:
    import torch


def _lora_layers(model) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def _factors(layer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(W, A, B, whether W is stored transposed: transformers' Conv1D, GPT-2)."""
    return (
        layer.get_base_layer().weight,
        layer.lora_A["default"].weight,
        layer.lora_B["default"].weight,
        bool(getattr(layer, "fan_in_fan_out", False)),
    )


class DeltaUpdate:
    """Applies the Delta-LoRA update to every adapted base weight after each optimizer step."""

    def __init__(self, model, scale: float):
        self.scale = scale
        self.layers = [_factors(layer) for layer in _lora_layers(model)]
        self.previous = self._snapshot()

    def _snapshot(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(a.detach().clone(), b.detach().clone()) for _, a, b, _ in self.layers]

    def step(self) -> None:
        import torch

        with torch.no_grad():
            self._apply()
        self.previous = self._snapshot()

    def _apply(self) -> None:
        for (weight, a, b, transposed), (a_prev, b_prev) in zip(
            self.layers, self.previous, strict=True
        ):
            delta = b.float() @ a.float() - b_prev.float() @ a_prev.float()
            delta = delta.T if transposed else delta
            weight.add_((self.scale * delta).to(weight.dtype))


BASE_WEIGHTS = "delta_lora_base.safetensors"


def callbacks(model, spec: AdapterSpec) -> list:
    """A Trainer callback running DeltaUpdate.step after every optimizer step, and saving and
    restoring the moved base weights with the Trainer's checkpoints."""
    from pathlib import Path

    from safetensors.torch import load_file, save_file
    from transformers import TrainerCallback

    update = DeltaUpdate(model, spec.delta_scale)

    def checkpoint_file(args, state) -> Path:
        return Path(args.output_dir) / f"checkpoint-{state.global_step}" / BASE_WEIGHTS

    class DeltaLoraCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.global_step == 0:
                return
            # Resumed: the Trainer loaded the adapter of this step; put back W of this step.
            saved = load_file(str(checkpoint_file(args, state)))
            import torch

            with torch.no_grad():
                for i, (weight, *_) in enumerate(update.layers):
                    weight.copy_(saved[str(i)])
            update.previous = update._snapshot()

        def on_optimizer_step(self, args, state, control, **kwargs):
            update.step()

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                weights = {
                    str(i): w.detach().cpu().contiguous() for i, (w, *_) in enumerate(update.layers)
                }
                save_file(weights, str(checkpoint_file(args, state)))

    return [DeltaLoraCallback()]


def before_save(model, spec: AdapterSpec) -> None:
    """Fold the base-weight updates into the adapter's scaling (see the module docstring)."""
    model.peft_config["default"].lora_alpha = spec.alpha + spec.delta_scale * spec.r


def check(spec: AdapterSpec) -> None:
    if spec.dropout != 0:
        raise ValueError(
            f"adapter.dropout must be 0 for delta_lora (got {spec.dropout}): its update of W "
            "assumes no dropout on the adapter path"
        )


METHOD = AdapterMethod(
    name="delta_lora",
    summary="LoRA + base weight moved by c x the change of B A",
    build=build_lora,
    check=check,
    callbacks=callbacks,
    before_save=before_save,
    cannot_shard="delta_lora moves the frozen base weights by the full B x A product after "
    "every step, and under FSDP each rank holds only a slice of them",
)
