"""What each compute stage computes with, as one typed object built once from the run config.

`LoraflowConfig.check_spec / train_spec / eval_spec` build them (the way `AdapterConfig.to_spec`
builds an AdapterSpec); flows pass them through the tasks to models/ unchanged. They hold compute
settings only: where results go and who hears about progress (output directories, run ids,
checkpoint stores, log and checkpoint callbacks) are separate keyword arguments of each
function. Field names are the config's. Each spec round-trips through JSON (`to_dict` /
`from_dict`): distributed training hands its TrainSpec to torchrun processes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from models.evaluation.harness import HarnessSpec
from models.methods import AdapterSpec


@dataclass(frozen=True)
class DataSpec:
    """The train/eval splits and how an example becomes tokens (`data.*`; the defaults are the
    config's, for calls without a config)."""

    path: str = "data"
    train_file: str = "train.jsonl"
    eval_file: str = "eval.jsonl"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    max_seq_len: int = 128
    too_long: str = "reject"
    format: str = "prompt_completion"
    text_field: str = "text"
    messages_field: str = "messages"
    role_field: str = "role"
    content_field: str = "content"
    role_names: dict[str, str] = dataclasses.field(default_factory=dict)
    chat_template: str | None = None
    train_on: str = "assistant"

    @property
    def train_path(self) -> str:
        return str(Path(self.path) / self.train_file)

    @property
    def eval_path(self) -> str:
        return str(Path(self.path) / self.eval_file)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> DataSpec:
        return cls(**raw)


@dataclass(frozen=True)
class CheckSpec:
    """What the input checks look at before anything is trained (models.checks).

    packing, gradient_checkpointing: the training settings the base model's own code must
    support (checked on the base itself, models.base_model.probes).
    sharding: with fsdp, the base's FSDP plan must name its decoder layers
    (models.training.sharding.wrap_refusal).
    metrics, slice_field: evaluation.metrics (custom ones imported and tried on the eval split)
    and the eval field every eval record must have.
    chunked_loss, kernels, compile: the training settings refused where they cannot run or are
    not exact (chunked_loss "on" on a base that post-processes its logits; liger without the
    package or for an architecture it does not patch; liger and compile without CUDA).
    lm_eval, gate_metrics: the lm-eval tasks (known, loading) and the metrics the promotion gate
    names (an lm-eval one must be reported by its task).
    """

    base_model: str
    data: DataSpec
    method: str
    target_modules: list[str] | str
    trust_remote_code: bool = False
    packing: bool = False
    gradient_checkpointing: bool = False
    sharding: str = "none"
    metrics: list[str] = dataclasses.field(default_factory=list)
    slice_field: str | None = None
    chunked_loss: str = "auto"
    kernels: str = "none"
    compile: bool = False
    lm_eval: HarnessSpec = dataclasses.field(default_factory=HarnessSpec)
    gate_metrics: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> CheckSpec:
        return cls(
            **{
                **raw,
                "data": DataSpec.from_dict(raw["data"]),
                "lm_eval": HarnessSpec(**raw.get("lm_eval", {})),
            }
        )


@dataclass(frozen=True)
class TrainSpec:
    """One training (models.training.train.train_adapter): base, data, adapter, optimizer, compute.

    The defaults serve calls without a config (tests, benchmarks); a config sets every field.
    num_processes > 1: data-parallel under torchrun (models.training.distributed); batch_size is per
        process.
    sharding: none (DDP, every process holds the whole model) or fsdp (FSDP2, parameters,
        gradients and optimizer state sharded across processes; models.training.sharding).
    num_nodes, rendezvous: machines of one run, each starting num_processes processes, and the
        host:port where their launchers meet (torchrun's c10d rendezvous).
    packing: each batch is packed padding-free into rows of <= data.max_seq_len tokens
        (models.data.packing) instead of padded rows.
    cpu_threads: torch threads while training on CPU (None: torch's default, one per core).
    gradient_checkpointing: keep only each decoder layer's input in the forward pass and
        recompute the layer in the backward pass (less activation memory, one more forward).
    save_steps: checkpoint cadence; checkpoints are written only where the caller gives a
        checkpoint directory.
    deterministic: PyTorch's deterministic mode while training (models.training.train.
        deterministic_algorithms); slower on CUDA, no effect on CPU results.
    chunked_loss: "auto" | "on" | "off": the loss one chunk of logits at a time
        (models.base_model.chunked_loss; models.training.loss decides).
    kernels: "none" | "liger": Liger Kernel through the Trainer (models.training.kernels).
    batch_tokens: batches sized by a token budget instead of batch_size rows
        (models.data.token_batches).
    compile: torch.compile the decoder (CUDA only).
    """

    base_model: str
    data: DataSpec
    method: str
    adapter: AdapterSpec
    max_steps: int
    learning_rate: float
    batch_size: int
    grad_accum_steps: int = 1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    logging_steps: int = 10
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    num_processes: int = 1
    sharding: str = "none"
    num_nodes: int = 1
    rendezvous: str = ""
    packing: bool = False
    cpu_threads: int | None = None
    gradient_checkpointing: bool = False
    save_steps: int = 0
    deterministic: bool = False
    chunked_loss: str = "auto"
    kernels: str = "none"
    batch_tokens: int | None = None
    compile: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> TrainSpec:
        return cls(
            **{
                **raw,
                "data": DataSpec.from_dict(raw["data"]),
                "adapter": AdapterSpec(**raw["adapter"]),
            }
        )


@dataclass(frozen=True)
class EvalSpec:
    """The evaluation of every candidate on the eval split (models.evaluation.evaluate).

    Examples over data.max_seq_len are always truncated here (data.too_long is for training).
    metrics: evaluation.metrics specs (built-in names or module:function) scored on the answers.
    slice_field: eval record field by which every figure is also reported per slice.
    chunked_loss: training.chunked_loss, for the eval loss (auto: where it is exact).
    lm_eval: lm-evaluation-harness tasks scored on every candidate (models.evaluation.harness).
    """

    data: DataSpec
    batch_size: int
    max_new_tokens: int
    max_examples: int | None = None
    trust_remote_code: bool = False
    device: str = "cpu"
    metrics: list[str] = dataclasses.field(default_factory=lambda: ["exact_match"])
    slice_field: str | None = None
    chunked_loss: str = "auto"
    lm_eval: HarnessSpec = dataclasses.field(default_factory=HarnessSpec)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> EvalSpec:
        return cls(
            **{
                **raw,
                "data": DataSpec.from_dict(raw["data"]),
                "lm_eval": HarnessSpec(**raw.get("lm_eval", {})),
            }
        )
