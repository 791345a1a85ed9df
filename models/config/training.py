"""The `training` section of the run configuration: optimizer, schedule, where, how fast and on
how many processes and machines training runs, and its checkpoints.

Its own module so models/config/run.py stays one screenful per section; LoraflowConfig nests it.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from models.config.data import _Section
from models.methods import get_method
from models.training.sharding import shard_refusal

_ENDPOINT = re.compile(r"^[A-Za-z0-9_.\[\]:-]+:[0-9]{1,5}$")


class TrainingConfig(_Section):
    """The optimizer, the schedule, where training runs, and its checkpoints."""

    max_steps: int = Field(200, ge=1, description="Optimizer steps to train.")
    learning_rate: float = Field(2e-3, gt=0, description="Peak learning rate (AdamW).")
    batch_size: int = Field(16, ge=1, description="Examples per device per step.")
    grad_accum_steps: int = Field(1, ge=1, description="Gradient accumulation steps.")
    warmup_steps: int = Field(10, description="Linear warmup steps.")
    weight_decay: float = Field(0.0, description="AdamW weight decay.")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning-rate schedule after warmup."
    )
    logging_steps: int = Field(10, ge=1, description="Log the training loss every N steps.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to train: auto picks CUDA when available."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype: auto = bf16 on CUDA with bf16 support, else fp32."
    )
    output_dir: str = Field(
        ".loraflow/runs",
        description="Where adapters are written locally: `<output_dir>/<MLflow run id>/adapter`.",
    )
    deployment: str | None = Field(
        None,
        description="Prefect deployment that trains (e.g. train-adapter/train on the gpu pool); "
        "empty = train inside the pipeline's own process.",
    )
    num_processes: int = Field(
        1,
        ge=1,
        description="Data-parallel training processes on this machine (DDP via torchrun: one per "
        "GPU with NCCL, gloo on CPU); batch_size stays per process, so the global batch is "
        "num_processes x batch_size x grad_accum_steps. Rank 0 logs and saves; the pipeline "
        "registers once.",
    )
    sharding: Literal["none", "fsdp"] = Field(
        "none",
        description="none: every process holds the whole base (DDP). fsdp: the frozen base is "
        "sharded across all processes of all nodes as it loads (FSDP2 per decoder layer, "
        "embedding and final norm; transformers' DistributedConfig), about 1/N of the base per "
        "process; the adapter stays whole on every process. One process in all trains "
        "unsharded. Not for delta_lora or dora (the config check says why); qlora on CUDA "
        "GPUs with bfloat16 and bitsandbytes >= 0.43 (4-bit weights stored in bfloat16, sharded "
        "by the Trainer; never run here), without checkpoints. Checkpoints "
        "resume as with DDP (every rank saves its optimizer, schedule and RNG state beside the "
        "adapter), except with dtype float16 (its loss scale is not kept).",
    )
    num_nodes: int = Field(
        1,
        ge=1,
        description="Machines training together, each running num_processes processes and "
        "the same train task (torchrun c10d rendezvous at `rendezvous`); the global rank 0 "
        "logs, saves and publishes the adapter.",
    )
    rendezvous: str = Field(
        "",
        description="host:port where the nodes' launchers meet when num_nodes > 1 (any node "
        "the others reach, e.g. the first pod's DNS name); empty with num_nodes 1.",
    )
    packing: bool = Field(
        False,
        description="Padding-free batches: each batch's examples packed into rows of at most "
        "data.max_seq_len tokens, position ids restarting per example so they do not attend to "
        "each other (same loss and gradients, no pad compute). Pays off when example lengths "
        "vary (about 1.6x on 10-90-token examples); leave it off for short uniform ones such as "
        "the demo data (docs/performance.md).",
    )
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads when training on CPU; empty = torch's default (one per core), "
        "slightly faster on a quiet machine. 1 is far faster for small models on a shared, "
        "busy machine (docs/performance.md).",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each decoder layer in the backward pass instead of keeping its "
        "activations: much less training memory for about one more forward pass per step "
        "(3.6x lower peak at 0.68x the speed on a 101M model, docs/performance.md); "
        "`loraflow plan` counts it.",
    )

    save_steps: int = Field(
        500,
        ge=0,
        description="Checkpoint every N steps (and at the last step); a rerun with the same "
        "config, data and base model resumes from the newest checkpoint. 0 = no checkpoints.",
    )
    checkpoint_store: str = Field(
        ".loraflow/checkpoints",
        description="Where checkpoints outlive the worker: a directory (shared, for several "
        "machines) or s3://bucket/prefix. Cleared once the adapter is registered.",
    )
    deterministic: bool = Field(
        False,
        description="Deterministic algorithms only (cuBLAS workspace config, no nondeterministic "
        "CUDA kernels): bit-identical reruns on the same GPU, slower. CPU runs are "
        "bit-identical either way.",
    )

    chunked_loss: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Compute the loss (training and evaluation) one chunk of tokens' logits at a "
        "time instead of holding batch x sequence x vocabulary logits and their gradient: same "
        "loss and gradients, far less memory with large vocabularies (docs/performance.md). "
        "auto: on where a batch's logits exceed one 256 MiB chunk and it is the model's own loss "
        "(not for bases that post-process logits, e.g. final_logit_softcapping, logit_scale, "
        "logits_scaling; not with num_processes > 1 or kernels: liger); on: always, refused at "
        "the checks where it is not exact; off: never.",
    )
    kernels: Literal["none", "liger"] = Field(
        "none",
        description="liger: Liger Kernel's fused Triton kernels through the Trainer "
        "(use_liger_kernel: RMSNorm, RoPE, SwiGLU, fused linear + cross-entropy); needs CUDA, "
        "the `gpu` extra (liger-kernel) and a base architecture Liger supports, else refused "
        "at the checks.",
    )
    batch_tokens: int | None = Field(
        None,
        ge=1,
        description="Size batches by tokens instead of rows: each batch takes as many examples "
        "as keep rows x padded (or, with packing, packed) row length within this budget "
        "(an example longer than the budget gets a batch of its own); batch_size is then "
        "unused. Empty = batch_size examples per batch.",
    )
    compile: bool = Field(
        False,
        description="torch.compile the base model's decoder before training (CUDA only; the "
        "first steps pay the compilation). Refused on CPU.",
    )

    @field_validator("checkpoint_store")
    @classmethod
    def _store(cls, v: str) -> str:
        if "://" in v and not (v.startswith("s3://") and len(v) > len("s3://")):
            raise ValueError(f"must be a directory or an s3://bucket/prefix URI (got {v!r})")
        return v

    @model_validator(mode="after")
    def _speed_options(self) -> TrainingConfig:
        if self.chunked_loss == "on" and self.num_processes > 1:
            raise ValueError(
                "training.chunked_loss: on runs in one process (got num_processes="
                f"{self.num_processes}); set training.chunked_loss: auto or off"
            )
        if self.chunked_loss == "on" and self.kernels == "liger":
            raise ValueError(
                "training.chunked_loss: on and training.kernels: liger both replace the loss "
                "(Liger fuses linear + cross-entropy); set training.chunked_loss: auto or off"
            )
        if self.compile and self.device == "cpu":
            raise ValueError(
                "training.compile needs CUDA (got training.device: cpu); set training.compile: "
                "false"
            )
        if self.kernels == "liger" and self.device == "cpu":
            raise ValueError(
                "training.kernels: liger needs CUDA (got training.device: cpu); set "
                "training.kernels: none"
            )
        return self


def check_parallel(training: TrainingConfig, method: str) -> None:
    """Sharding and nodes that this method and process count can run (one-line errors)."""
    refusal = shard_refusal(training.sharding, method, get_method(method).cannot_shard)
    if refusal:
        raise ValueError(refusal)
    if training.sharding == "fsdp":
        _check_fsdp(training, method)
    if training.num_nodes > 1 and not _ENDPOINT.match(training.rendezvous):
        raise ValueError(
            f"training.rendezvous must be host:port when num_nodes > 1 (got "
            f"{training.rendezvous!r}): where the nodes' launchers meet"
        )


def _check_fsdp(training: TrainingConfig, method: str) -> None:
    """What a sharded (fsdp) run cannot do: checkpoint float16's loss scale; for a quantized
    base (FSDP-QLoRA, never run here), train in another dtype than bfloat16 or checkpoint at
    all; keep checkpoints of several nodes in S3."""
    if training.save_steps > 0 and training.dtype == "float16":
        raise ValueError(
            "training.sharding fsdp checkpoints cannot keep float16's loss scale (the Trainer "
            "saves only the adapter of a base sharded as it loads): set training.dtype: bfloat16 "
            "or float32, or training.save_steps: 0"
        )
    if get_method(method).quantized:
        if training.dtype not in ("auto", "bfloat16"):
            raise ValueError(
                f"training.sharding fsdp with adapter.method {method} trains in bfloat16 (its "
                f"4-bit weights stored in it); set training.dtype: auto or bfloat16 (got "
                f"{training.dtype})"
            )
        if training.save_steps > 0:
            raise ValueError(
                f"training.sharding fsdp with adapter.method {method} does not checkpoint (the "
                "Trainer's FSDP checkpoints of a 4-bit base were never run here): set "
                f"training.save_steps: 0 (got {training.save_steps})"
            )
    if (
        training.num_nodes > 1
        and training.save_steps > 0
        and training.checkpoint_store.startswith("s3://")
    ):
        raise ValueError(
            "training.checkpoint_store must be a directory all nodes share for a sharded run on "
            f"several nodes (got {training.checkpoint_store!r}): every rank writes its own "
            "optimizer and RNG state into each checkpoint, and only rank 0's node uploads to S3"
        )
