"""Training an adapter on a base model with the Hugging Face Trainer."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.base_model.loading import cpu_threads, load_base, resolve_device, resolve_dtype
from models.config.specs import TrainSpec
from models.data.chat import prepare_tokenizer, save_prompt_format
from models.data.prepared import prepare_split
from models.hashing import file_sha256
from models.methods import AdapterMethod, get_method
from models.training.batches import Collator, train_items
from models.training.checkpoints import (
    checkpoint_marker,
    checkpoint_step,
    latest_checkpoint,
    load_adapter_weights,
    resumed_figures,
    sharded_train_state,
)
from models.training.hardware import numeric_environment
from models.training.memory import page_in, track_peak_memory
from models.training.sharding import (
    fsdp_job,
    resident_param_bytes,
    saved_state_dict,
    sharded_load_kwargs,
    sharded_trainer,
    shards_at_load,
    trainer_fsdp_arguments,
)

ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class TrainResult:
    """What training produced: where the adapter is, its hash and the training figures."""

    adapter_dir: str
    adapter_sha256: str
    trainable_params: int
    total_params: int
    steps: int
    train_loss: float
    train_seconds: float
    tokens_per_second: float
    truncated_examples: int
    resumed_from_step: int = 0
    adapter_bytes: int = 0
    peak_memory_bytes: int = 0
    peak_memory_kind: str = ""
    param_bytes_per_rank: int = 0  # parameters resident in one process (its shards under FSDP)
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    # The numeric environment training ran in (models.training.hardware), taken inside its thread
    # setting: a dispatched training's figures carry the worker's, not the orchestrator's.
    environment: dict[str, str] = field(default_factory=dict)
    # Whether the loss was computed one chunk of logits at a time (training.chunked_loss).
    chunked_loss: bool = False
    # The key of the prepared train split it read (models.data.prepared): what its tokens were
    # made from.
    data_prepared_key: str = ""

    def to_dict(self) -> dict:
        """JSON-ready figures (for another process or machine)."""
        return dataclasses.asdict(self)

    def metrics(self) -> dict[str, float]:
        """The training figures a run logs."""
        return {
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "adapter_bytes": self.adapter_bytes,
            "train_loss_final": self.train_loss,
            "train_seconds": self.train_seconds,
            "train_tokens_per_second": self.tokens_per_second,
            "train_peak_memory_bytes": self.peak_memory_bytes,
            "truncated_examples": self.truncated_examples,
            "resumed_from_step": self.resumed_from_step,
        }

    def tags(self) -> dict[str, str]:
        """What the run and the model version record of this training: the adapter's sha256 and
        the environment it was trained in (`env.cpu`, `env.threads`, ...)."""
        env = {f"env.{k}": v for k, v in self.environment.items()}
        prepared = {"data_prepared_key": self.data_prepared_key} if self.data_prepared_key else {}
        return {"adapter_sha256": self.adapter_sha256, **prepared, **env}

    @classmethod
    def from_dict(cls, raw: dict) -> TrainResult:
        """Inverse of to_dict (JSON turns the loss history's tuples into lists)."""
        return cls(**{**raw, "loss_history": [tuple(x) for x in raw.get("loss_history", [])]})


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool):
    """PyTorch's deterministic mode for the duration of a training, restored afterwards.

    On CUDA this makes cuBLAS use a fixed workspace (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS
    starts, so it is only set if nothing set it yet), turns off cuDNN autotuning and makes any op
    without a deterministic kernel raise instead of silently varying. CPU kernels used here are
    deterministic already, so on CPU this changes nothing in the results.
    """
    if not enabled:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:]


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def train_adapter(
    spec: TrainSpec,
    *,
    output_dir: str | Path,
    extra_files: dict[str, str] | None = None,
    on_log: Callable[[dict[str, float], int], None] | None = None,
    save: bool = True,
    checkpoint_dir: str | Path | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    callbacks: list | None = None,
) -> TrainResult:
    """Train `spec.method` on the train split and save the adapter (+ tokenizer) to output_dir.

    The spec says what to train and how (config.specs.TrainSpec); the rest is where results go:
    extra_files: name -> text written beside the adapter (e.g. the resolved run config).
    on_log: called with the Trainer's log dict and step (loss curve for the caller's tracker).
    save: False in the non-zero ranks of a distributed run (training.distributed): they train
        but write nothing, and their result has no adapter.
    checkpoint_dir: with spec.save_steps > 0, a checkpoint (adapter, optimizer, scheduler, RNG
        and Trainer state) goes to checkpoint_dir/checkpoint-<step> every save_steps steps and at
        the last step, and training resumes from the newest complete one found there; resumed
        training ends with the same adapter bytes as an uninterrupted one (on CPU).
    on_checkpoint: called with each finished checkpoint directory (e.g. to copy it elsewhere).
    callbacks: further Trainer callbacks (e.g. the benchmarks' step clock).
    Under torchrun (WORLD_SIZE > 1) the Trainer runs DDP: gloo on CPU, NCCL on CUDA with one
    GPU per process.
    """
    from transformers import Trainer

    from models.base_model.chunked_loss import causal_lm_parts
    from models.training.loss import ChunkedLossTrainer, use_chunked_loss

    device = resolve_device(spec.device)
    torch_dtype = resolve_dtype(spec.dtype, device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "cuda" and world_size > 1:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" = this rank's GPU
    method = get_method(spec.method)
    model, tokenizer, data = _load(spec, method, device, torch_dtype)
    trainable, total = count_params(model)

    checkpoints = Path(checkpoint_dir) if checkpoint_dir and spec.save_steps > 0 else None
    resume = latest_checkpoint(checkpoints) if checkpoints else None
    history: list[tuple[int, float]] = []
    collate = Collator(packing=spec.packing, row_len=spec.data.max_seq_len, tokenizer=tokenizer)
    sharded = shards_at_load(spec.sharding, world_size, method.quantized)
    args = _training_arguments(
        spec, Path(output_dir), checkpoints, device, torch_dtype, world_size, method.quantized
    )
    optimizers = _optimizers(method, model, spec)
    method_callbacks = method.callbacks(model, spec.adapter) if method.callbacks else []
    batch_tokens = spec.batch_tokens or spec.batch_size * spec.data.max_seq_len
    chunked = use_chunked_loss(spec.chunked_loss, model, batch_tokens, world_size, spec.kernels)
    if spec.compile and device == "cuda":
        causal_lm_parts(model)[0].compile()  # the decoder; the loss path calls it either way
    # A base sharded at load saves checkpoints without gathering it (chunked is off for > 1 rank).
    trainer_class = sharded_trainer() if sharded else ChunkedLossTrainer if chunked else Trainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_items(
            data,
            batch_tokens=spec.batch_tokens,
            packing=spec.packing,
            row_len=spec.data.max_seq_len,
            seed=spec.adapter.seed,
        ),
        data_collator=collate,
        callbacks=[
            _relay(history, on_log),
            *method_callbacks,
            # A sharded base's optimizer, schedule and RNG are saved before the marker is written.
            *([sharded_train_state(resume)] if checkpoints and sharded else []),
            *([checkpoint_marker(checkpoints, on_checkpoint)] if checkpoints else []),
            *(callbacks or []),
        ],
        optimizers=optimizers,
    )
    output, seconds, memory, environment = _run(trainer, model, spec, device, resume)
    seen = _tokens_of_all_processes(collate.seen, trainer, world_size)
    resumed_from = checkpoint_step(resume) if resume else 0
    if resumed_from:
        history, train_loss, steps = resumed_figures(resume, trainer, output)
    else:
        train_loss, steps = float(output.training_loss), output.global_step
    result = TrainResult(
        adapter_dir="",
        adapter_sha256="",
        trainable_params=trainable,
        total_params=total,
        steps=steps,
        train_loss=train_loss,
        train_seconds=seconds,
        tokens_per_second=seen / seconds if seconds > 0 else 0.0,
        truncated_examples=data.truncated,
        resumed_from_step=resumed_from,
        peak_memory_bytes=memory.peak_bytes,
        peak_memory_kind=memory.kind,
        loss_history=history,
        environment=environment,
        chunked_loss=chunked,
        param_bytes_per_rank=resident_param_bytes(model),
        data_prepared_key=data.key,
    )
    state_dict = saved_state_dict(model)  # sharded: every rank takes part; else None
    if save:
        _save(
            result, model, tokenizer, method, spec, Path(output_dir), extra_files or {}, state_dict
        )
    return result


def _load(spec: TrainSpec, method: AdapterMethod, device: str, torch_dtype: torch.dtype):
    """(model with the adapter, tokenizer, prepared train split)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    sharded = fsdp_job(spec.sharding, world_size)
    load_kwargs = method.load_kwargs(sharded=sharded) if method.load_kwargs else {}
    load_kwargs |= sharded_load_kwargs(spec.sharding, world_size, method.quantized)
    model, tokenizer = load_base(
        spec.base_model,
        dtype=torch_dtype,
        device=device,
        trust_remote_code=spec.trust_remote_code,
        **load_kwargs,
    )
    data = spec.data
    prepare_tokenizer(tokenizer, data, spec.base_model, spec.trust_remote_code)
    # Mapped from the check stage's preparation; prepared here where none is (one rank
    # prepares, the others wait for it and map).
    prepared = prepare_split(data.train_path, data, tokenizer)
    return method.build(model, spec.adapter), tokenizer, prepared


def _training_arguments(
    spec: TrainSpec,
    output_dir: Path,
    checkpoints: Path | None,
    device: str,
    torch_dtype: torch.dtype,
    world_size: int,
    quantized: bool,
):
    """The Trainer's settings: the spec's, checkpointing only into `checkpoints`."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(checkpoints or output_dir / "trainer"),
        max_steps=spec.max_steps,
        # training.batch_tokens: each dataset item is a whole batch (models.training.batches).
        per_device_train_batch_size=1 if spec.batch_tokens else spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum_steps,
        learning_rate=spec.learning_rate,
        warmup_steps=spec.warmup_steps,
        weight_decay=spec.weight_decay,
        lr_scheduler_type=spec.lr_scheduler,
        logging_steps=spec.logging_steps,
        save_strategy="steps" if checkpoints else "no",
        save_steps=spec.save_steps if checkpoints else 500,
        save_total_limit=2,  # the newest may be cut short by a crash; keep the one before
        # The Trainer refuses to checkpoint more of a base sharded at load; the rest of the
        # training state is models.training.checkpoints.sharded_train_state's.
        save_only_model=shards_at_load(spec.sharding, world_size, quantized),
        report_to="none",
        seed=spec.adapter.seed,
        data_seed=spec.adapter.seed,
        bf16=torch_dtype == torch.bfloat16,
        fp16=torch_dtype == torch.float16,
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        activation_checkpointing=spec.gradient_checkpointing,
        use_liger_kernel=spec.kernels == "liger",
        disable_tqdm=False,
        ddp_backend=("gloo" if device == "cpu" else "nccl") if world_size > 1 else None,
        **trainer_fsdp_arguments(spec.sharding, world_size, quantized),
    )


def _optimizers(method: AdapterMethod, model: torch.nn.Module, spec: TrainSpec) -> tuple:
    """The method's own AdamW parameter groups, or (None, None): the Trainer's default."""
    if method.param_groups is None:
        return None, None
    groups = method.param_groups(model, spec.learning_rate, spec.adapter)
    return torch.optim.AdamW(groups, lr=spec.learning_rate, weight_decay=spec.weight_decay), None


def _relay(history: list[tuple[int, float]], on_log: Callable | None):
    """A callback that records the loss curve into `history` and hands every log to on_log."""
    from transformers import TrainerCallback

    class Relay(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
            if "loss" in logs:
                history.append((state.global_step, logs["loss"]))
            if on_log:
                on_log(logs, state.global_step)

    return Relay()


def _run(trainer, model: torch.nn.Module, spec: TrainSpec, device: str, resume: Path | None):
    """(Trainer output or None, seconds, peak memory, numeric environment) of trainer.train()
    under the spec's compute settings, resumed from `resume` if given."""
    # A checkpoint of the last step means training had finished (the run failed later): take
    # its weights. Resuming the Trainer there would run one more optimizer step.
    finished = resume is not None and checkpoint_step(resume) >= spec.max_steps
    if device == "cpu":
        page_in(model)  # mapped weights count before training, not in its peak
    output = None
    started = time.perf_counter()
    with (
        track_peak_memory(device) as memory,
        deterministic_algorithms(spec.deterministic),
        cpu_threads(spec.cpu_threads if device == "cpu" else None),
    ):
        environment = numeric_environment()
        if finished:
            load_adapter_weights(model, resume / ADAPTER_WEIGHTS)
        else:
            output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return output, time.perf_counter() - started, memory, environment


def _tokens_of_all_processes(seen: int, trainer, world_size: int) -> int:
    """Tokens of all processes, so tokens/s is the whole job's throughput."""
    if world_size > 1 and torch.distributed.is_initialized():
        total_seen = torch.tensor([seen], dtype=torch.long, device=trainer.args.device)
        torch.distributed.all_reduce(total_seen)
        return int(total_seen.item())
    return seen


def _save(
    result: TrainResult,
    model: torch.nn.Module,
    tokenizer,
    method: AdapterMethod,
    spec: TrainSpec,
    out: Path,
    extra_files: dict[str, str],
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Adapter, tokenizer and extra files to `out`; the result gets their place and hash.
    state_dict: a sharded model's saved_state_dict (PEFT picks the adapter's tensors)."""
    out.mkdir(parents=True, exist_ok=True)
    if method.before_save is not None:
        method.before_save(model, spec.adapter)
    model.save_pretrained(out, state_dict=state_dict)
    tokenizer.save_pretrained(out)  # with the chat template: serving renders as training did
    save_prompt_format(out, spec.data)
    for name, text in extra_files.items():
        (out / name).write_text(text, encoding="utf-8")
    result.adapter_dir = str(out)
    result.adapter_sha256 = file_sha256(out / ADAPTER_WEIGHTS)
    result.adapter_bytes = (out / ADAPTER_WEIGHTS).stat().st_size
