"""Training an adapter on a base model with the Hugging Face Trainer."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.data import pad_batch, read_split, tokenize
from models.hashing import file_sha256
from models.loading import cpu_threads, load_base, resolve_device, resolve_dtype
from models.memory import page_in, track_peak_memory
from models.methods import AdapterSpec, get_method
from models.packing import pack_batch

ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Written into a checkpoint directory after the Trainer finished saving it: a directory without
# it was cut short (e.g. the process was killed mid-save) and is never resumed from.
CHECKPOINT_DONE = "loraflow-checkpoint-complete"


def checkpoint_step(path: str | Path) -> int:
    """checkpoint-<step> -> step."""
    return int(Path(path).name.rpartition("-")[2])


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest complete checkpoint-<step> directory under checkpoint_dir, if any."""
    root = Path(checkpoint_dir)
    done = [
        p
        for p in root.glob("checkpoint-*")
        if p.name.rpartition("-")[2].isdigit() and (p / CHECKPOINT_DONE).is_file()
    ]
    return max(done, key=checkpoint_step, default=None)


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
    loss_history: list[tuple[int, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready figures (for another process or machine)."""
        return dataclasses.asdict(self)

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


def _load_adapter_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """The trainable weights of a finished training, from its last checkpoint."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(checkpoint / ADAPTER_WEIGHTS)))


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def train_adapter(
    *,
    base_model: str,
    train_file: str | Path,
    prompt_field: str,
    completion_field: str,
    max_seq_len: int,
    too_long: str,
    method: str,
    spec: AdapterSpec,
    max_steps: int,
    learning_rate: float,
    batch_size: int,
    grad_accum_steps: int = 1,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    lr_scheduler: str = "linear",
    logging_steps: int = 10,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    output_dir: str | Path,
    extra_files: dict[str, str] | None = None,
    on_log: Callable[[dict[str, float], int], None] | None = None,
    save: bool = True,
    save_steps: int = 0,
    checkpoint_dir: str | Path | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    deterministic: bool = False,
    packing: bool = False,
    threads: int | None = None,
    gradient_checkpointing: bool = False,
) -> TrainResult:
    """Train `method` on the train split and save the adapter (+ tokenizer) to output_dir.

    extra_files: name -> text written beside the adapter (e.g. the resolved run config).
    on_log: called with the Trainer's log dict and step (loss curve for the caller's tracker).
    save: False in the non-zero ranks of a distributed run (see models.distributed): they train
        but write nothing, and their result has no adapter.
    save_steps, checkpoint_dir: with both set, a checkpoint (adapter, optimizer, scheduler, RNG
        and Trainer state) goes to checkpoint_dir/checkpoint-<step> every save_steps steps and at
        the last step, and training resumes from the newest complete one found there; resumed
        training ends with the same adapter bytes as an uninterrupted one (on CPU).
    on_checkpoint: called with each finished checkpoint directory (e.g. to copy it elsewhere).
    deterministic: PyTorch's deterministic mode while training (see deterministic_algorithms);
        slower on CUDA, no effect on CPU results.
    packing: each batch is packed padding-free into rows of <= max_seq_len tokens
        (models.packing) instead of padded rows.
    threads: torch threads while training on CPU (None: torch's default, one per core).
    gradient_checkpointing: keep only each decoder layer's input in the forward pass and
        recompute the layer in the backward pass (less activation memory, one more forward).
    Under torchrun (WORLD_SIZE > 1) the Trainer runs DDP: gloo on CPU, NCCL on CUDA with one
    GPU per process.
    """
    from transformers import Trainer, TrainerCallback, TrainingArguments

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "cuda" and world_size > 1:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" = this rank's GPU
    adapter_method = get_method(method)
    load_kwargs = adapter_method.load_kwargs() if adapter_method.load_kwargs else {}
    model, tokenizer = load_base(
        base_model,
        dtype=torch_dtype,
        device=device,
        trust_remote_code=trust_remote_code,
        **load_kwargs,
    )
    data = tokenize(
        read_split(train_file, prompt_field, completion_field),
        tokenizer,
        max_seq_len,
        too_long,
        source=str(train_file),
    )
    model = adapter_method.build(model, spec)
    trainable, total = count_params(model)

    history: list[tuple[int, float]] = []
    tokens = {"seen": 0}

    checkpoints = Path(checkpoint_dir) if checkpoint_dir and save_steps > 0 else None
    resume = latest_checkpoint(checkpoints) if checkpoints else None

    class _Checkpointed(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            path = checkpoints / f"checkpoint-{state.global_step}"
            (path / CHECKPOINT_DONE).write_text(f"{state.global_step}\n")
            if on_checkpoint:
                on_checkpoint(path)

    class _Relay(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
            if "loss" in logs:
                history.append((state.global_step, logs["loss"]))
            if on_log:
                on_log(logs, state.global_step)

    def collate(features):
        tokens["seen"] += sum(len(f["input_ids"]) for f in features)  # real tokens, no padding
        if packing:
            return pack_batch(features, row_len=max_seq_len, pad_id=tokenizer.pad_token_id)
        return pad_batch(features, tokenizer.pad_token_id)

    use_bf16 = torch_dtype == torch.bfloat16
    args = TrainingArguments(
        output_dir=str(checkpoints or Path(output_dir) / "trainer"),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum_steps,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        lr_scheduler_type=lr_scheduler,
        logging_steps=logging_steps,
        save_strategy="steps" if checkpoints else "no",
        save_steps=save_steps if checkpoints else 500,
        save_total_limit=2,  # the newest may be cut short by a crash; keep the one before
        report_to="none",
        seed=spec.seed,
        data_seed=spec.seed,
        bf16=use_bf16,
        fp16=torch_dtype == torch.float16,
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        activation_checkpointing=gradient_checkpointing,
        disable_tqdm=False,
        ddp_backend=("gloo" if device == "cpu" else "nccl") if world_size > 1 else None,
    )
    optimizers = (None, None)
    if adapter_method.param_groups is not None:
        groups = adapter_method.param_groups(model, learning_rate, spec)
        optimizers = (torch.optim.AdamW(groups, lr=learning_rate, weight_decay=weight_decay), None)
    method_callbacks = adapter_method.callbacks(model, spec) if adapter_method.callbacks else []
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.features,
        data_collator=collate,
        callbacks=[_Relay(), *method_callbacks, *([_Checkpointed()] if checkpoints else [])],
        optimizers=optimizers,
    )
    resumed_from = checkpoint_step(resume) if resume else 0
    # A checkpoint of the last step means training had finished (the run failed later): take
    # its weights. Resuming the Trainer there would run one more optimizer step.
    finished = resumed_from >= max_steps
    if device == "cpu":
        page_in(model)  # mapped weights count before training, not in its peak
    started = time.perf_counter()
    with (
        track_peak_memory(device) as memory,
        deterministic_algorithms(deterministic),
        cpu_threads(threads if device == "cpu" else None),
    ):
        if finished:
            _load_adapter_weights(model, resume)
        else:
            output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    seen = tokens["seen"]
    if world_size > 1 and torch.distributed.is_initialized():
        # Tokens of all processes, so tokens/s is the whole job's throughput.
        total_seen = torch.tensor([seen], dtype=torch.long, device=trainer.args.device)
        torch.distributed.all_reduce(total_seen)
        seen = int(total_seen.item())

    if resumed_from:
        # The Trainer averages over this session's steps only; report the whole run's
        # logged losses instead (the checkpoint carries the earlier ones).
        log_history = (
            json.loads((resume / "trainer_state.json").read_text())["log_history"]
            if finished
            else trainer.state.log_history
        )
        history[:] = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
        logged = [loss for _, loss in history]
        train_loss = sum(logged) / len(logged) if logged else float("nan")
        steps = resumed_from if finished else output.global_step
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
    )
    if not save:
        return result
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if adapter_method.before_save is not None:
        adapter_method.before_save(model, spec)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for name, text in (extra_files or {}).items():
        (out / name).write_text(text, encoding="utf-8")
    result.adapter_dir = str(out)
    result.adapter_sha256 = file_sha256(out / ADAPTER_WEIGHTS)
    result.adapter_bytes = (out / ADAPTER_WEIGHTS).stat().st_size
    return result
