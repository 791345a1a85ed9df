"""The one typed run configuration of loraflow, loaded from YAML with `--set` overrides.

Plain pydantic: the flow, the CLI and the Prefect run form all use these models. Every field has
a description because Prefect shows them in the dashboard's run form.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from models.config.data import DataConfig, _Section
from models.config.evaluation import EvaluationConfig, GuardConfig, check_gate
from models.config.schema import describe_error
from models.config.specs import CheckSpec, DataSpec, EvalSpec, TrainSpec
from models.config.training import TrainingConfig, check_parallel
from models.errors import LoraflowError
from models.evaluation import harness
from models.evaluation.metrics import direction
from models.methods import METHOD_NAMES, AdapterSpec, get_method
from models.registry.promotion import Gate, Guard

# MLflow registered-model names: keep to a portable subset (no path separators, no `..`).
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Literal fields whose bad value reads best as "unknown <noun>"; the others say "unknown value".
_NOUNS = {"method": "method"}


def check_model_name(name: str) -> str:
    """A registered-model name MLflow accepts that is also safe as a path component.

    MLflow itself refuses '/' and ':'; loraflow also uses the name in local paths and S3 keys,
    so `..` and anything outside letters, digits, '_', '-', '.' is refused too.
    """
    if not _MODEL_NAME.match(name) or ".." in name:
        raise ValueError(
            f"{name!r} is not a valid model name (letters, digits, '_', '-', '.'; "
            "starts with a letter or digit; no '..')"
        )
    return name


class ConfigError(LoraflowError):
    """A user-facing configuration problem; the message is one line naming the field."""


class AdapterConfig(_Section):
    """The adapter method and its hyperparameters (`models/methods/`, one module per method)."""

    method: Literal[METHOD_NAMES] = Field(  # type: ignore[valid-type]
        "lora", description="Adapter method; the README's method table says what each trains."
    )
    r: int = Field(8, ge=1, description="Rank of the low-rank update.")
    alpha: float = Field(
        16.0, gt=0, description="Scaling numerator: the update is scaled by alpha/r."
    )
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="Linear layer names to adapt, or 'all-linear'.",
    )
    seed: int = Field(0, description="Seed for adapter init, data order and dropout.")
    delta_scale: float = Field(
        0.5, description="delta_lora: c in W += c * (B'A' - BA) after every optimizer step."
    )
    loraplus_lr_ratio: float = Field(
        16.0, description="lora_plus: B's learning rate as a multiple of A's."
    )

    @model_validator(mode="after")
    def _method_options(self) -> AdapterConfig:
        check = get_method(self.method).check
        if check is not None:
            check(self.to_spec())
        return self

    def to_spec(self) -> AdapterSpec:
        """The flat settings the adapter methods are built from."""
        return AdapterSpec(
            r=self.r,
            alpha=self.alpha,
            dropout=self.dropout,
            target_modules=self.target_modules,
            seed=self.seed,
            delta_scale=self.delta_scale,
            loraplus_lr_ratio=self.loraplus_lr_ratio,
        )

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list) and not v:
            raise ValueError("must name at least one module (or 'all-linear')")
        return v


class RegistryConfig(_Section):
    """Where runs and versions go in MLflow, and when a new version becomes champion."""

    model_name: str = Field(
        "loraflow-demo",
        description="MLflow registered model name (letters, digits, '_', '-', '.'; no '..').",
    )
    experiment: str = Field("loraflow", description="MLflow experiment for the runs.")
    promote_metric: str = Field(
        "exact_match",
        description="Metric deciding promotion: eval_loss or perplexity (lower is better), "
        "one of evaluation.metrics, or an evaluation.lm_eval figure (<task>_<metric>).",
    )
    min_improvement: float = Field(
        0.0, description="Promote only when the challenger beats the champion by more than this."
    )
    tie_breaker: str | None = Field(
        None,
        description="On a tie on promote_metric, promote when this metric is strictly better; "
        "empty = a tie keeps the champion.",
    )
    guards: dict[str, GuardConfig] = Field(
        default_factory=dict,
        description="Metrics that may not regress: {metric: {max_regression: x, per_slice: "
        "bool, against: champion|base}}, e.g. {eval_loss: {max_regression: 0.02}} (in the "
        "metric's units; per_slice: on every slice too; against base: than the base model on "
        "this run, e.g. an evaluation.lm_eval figure as a forgetting guard); a challenger "
        "breaking one is not promoted.",
    )
    approval: Literal["none", "required"] = Field(
        "none",
        description="none: a challenger that passes the gate becomes champion at once; "
        "required: it waits (approval.status pending) until a person approves it in the Prefect "
        "UI or with `loraflow approve`; a reject or no answer keeps it challenger.",
    )
    approval_timeout: int = Field(
        7 * 24 * 3600,
        ge=10,
        description="Seconds a version waits for sign-off (registry.approval: required) before "
        "it expires and stays challenger.",
    )

    @field_validator("model_name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_model_name(v)


class ExportConfig(_Section):
    """Merging the promoted adapter into its base and publishing it to S3."""

    enabled: bool = Field(
        False, description="Merge each new champion and export it to S3 as the run's last stage."
    )
    to: str | None = Field(None, description="Destination, e.g. s3://bucket/prefix.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Dtype of the merged weights (auto = the base's)."
    )
    max_shard_size: str = Field("2GB", description="Largest safetensors shard, e.g. 500MB.")
    delete_local_shards: bool = Field(
        False,
        description="Upload each merged shard as soon as it is written, then delete it: local "
        "disk holds about one shard instead of the whole model.",
    )
    concurrency: int = Field(8, ge=1, description="Parallel S3 transfers per file (multipart).")
    multipart_threshold_mb: int = Field(
        64, ge=1, description="Files above this use multipart upload."
    )
    sse: Literal["AES256", "aws:kms"] | None = Field(
        None, description="Server-side encryption for uploaded objects."
    )
    sse_kms_key_id: str | None = Field(None, description="KMS key id when sse is aws:kms.")

    @field_validator("to")
    @classmethod
    def _s3_uri(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("s3://") or len(v) <= len("s3://")):
            raise ValueError(f"must be an s3://bucket/prefix URI (got {v!r})")
        return v

    @property
    def destination(self) -> str | None:
        """Where a run exports to: `to` when export is enabled, else None (nothing to check)."""
        return self.to if self.enabled else None


class LoraflowConfig(_Section):
    """A whole fine-tune run: base model, data, adapter, training, evaluation, registry, export."""

    base_model: str = Field(
        ...,
        description="Hugging Face hub id, local directory or s3://bucket/prefix/ (downloaded "
        "once into a local cache, verified against its checksums) of the base causal LM.",
    )
    base_model_trust_remote_code: bool = Field(
        False, description="Allow a base model that needs its own Python code."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    @model_validator(mode="after")
    def _export_target(self) -> LoraflowConfig:
        if self.export.enabled and not (self.export.to or "").startswith("s3://"):
            raise ValueError("export.to must be an s3:// URI when export.enabled is true")
        return self

    @model_validator(mode="after")
    def _sharding(self) -> LoraflowConfig:
        check_parallel(self.training, self.adapter.method)
        return self

    @model_validator(mode="after")
    def _gate_metrics(self) -> LoraflowConfig:
        check_gate(self.registry, self.evaluation, self.data.format)
        return self

    def gate(self) -> Gate:
        """The promotion gate; directions of custom metrics come from their functions, those of
        lm-eval figures from their metric's name (models.evaluation.harness.direction)."""
        registry, evaluation = self.registry, self.evaluation
        return Gate(
            metric=registry.promote_metric,
            min_improvement=registry.min_improvement,
            guards=tuple(
                Guard(m, g.max_regression, g.per_slice, g.against)
                for m, g in registry.guards.items()
            ),
            tie_breaker=registry.tie_breaker,
            directions={
                n: direction(n, evaluation.metrics)
                or harness.direction(n, evaluation.lm_eval.tasks)
                for n in self.gate_metrics()
            },
        )

    def gate_metrics(self) -> list[str]:
        """Every metric the promotion gate names: promote_metric, tie_breaker, the guards."""
        registry = self.registry
        return [m for m in (registry.promote_metric, registry.tie_breaker, *registry.guards) if m]

    def to_yaml(self) -> str:
        """The resolved config as YAML (stable key order), as stored with every artifact."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=True)

    def sha256(self) -> str:
        """Hash of the resolved config; equal configs give equal hashes."""
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()

    # One typed argument object per stage (models.config.specs), built here and nowhere else. A spec
    # field is the config field of the same name.

    def with_data_dir(self, data_dir: str) -> LoraflowConfig:
        """The same config reading its splits from `data_dir` (a data version pulled by md5)."""
        return self.model_copy(update={"data": self.data.model_copy(update={"path": data_dir})})

    def adapter_dir(self, run_id: str) -> str:
        """Where run `run_id` writes its adapter: <training.output_dir>/<run id>/adapter."""
        return str(Path(self.training.output_dir) / run_id / "adapter")

    def data_spec(self) -> DataSpec:
        return DataSpec(**self.data.model_dump(exclude={"dvc_remote", "source"}))

    def check_spec(self, base_model: str) -> CheckSpec:
        """For the input checks; `base_model` as resolved (base_model.paths.canonical_base)."""
        return CheckSpec(
            base_model=base_model,
            data=self.data_spec(),
            method=self.adapter.method,
            target_modules=self.adapter.target_modules,
            trust_remote_code=self.base_model_trust_remote_code,
            packing=self.training.packing,
            gradient_checkpointing=self.training.gradient_checkpointing,
            sharding=self.training.sharding,
            metrics=self.evaluation.metrics,
            slice_field=self.evaluation.slice_field,
            chunked_loss=self.training.chunked_loss,
            kernels=self.training.kernels,
            compile=self.training.compile,
            lm_eval=self.evaluation.lm_eval.to_spec(),
            gate_metrics=self.gate_metrics(),
        )

    def train_spec(self, base_model: str) -> TrainSpec:
        """For the training; `base_model` as resolved (base_model.paths.canonical_base).
        Where the adapter and checkpoints go (training.output_dir, checkpoint_store) is the
        caller's."""
        training = self.training.model_dump(include=set(TrainSpec.__dataclass_fields__))
        return TrainSpec(
            base_model=base_model,
            data=self.data_spec(),
            method=self.adapter.method,
            adapter=self.adapter.to_spec(),
            trust_remote_code=self.base_model_trust_remote_code,
            **training,
        )

    def eval_spec(self) -> EvalSpec:
        """For the evaluation of every candidate (base, adapter, champion)."""
        return EvalSpec(
            data=self.data_spec(),
            trust_remote_code=self.base_model_trust_remote_code,
            device=self.training.device,
            chunked_loss=self.training.chunked_loss,
            **self.evaluation.model_dump(exclude={"lm_eval"}),
            lm_eval=self.evaluation.lm_eval.to_spec(),
        )


M = TypeVar("M", bound=BaseModel)


def _format_error(err: ValidationError, source: str, model: type[BaseModel]) -> str:
    """One line: where (file and dotted key), what, and the bad value."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key {where!r}"
    if first["type"] == "missing":
        return f"{source}: missing required key {where!r}"
    msg = describe_error(model, first, _NOUNS)
    if msg.startswith(f"{where}.") or where == "<root>":  # the message names the field
        return f"{source}: {msg}"
    return f"{source}: {where}: {msg}"


def config_from_dict(raw: dict[str, Any], source: str = "config") -> LoraflowConfig:
    """Validate plain data into a config, raising ConfigError with a one-line message."""
    return validate_section(LoraflowConfig, raw, source)


def validate_section(model: type[M], raw: dict[str, Any], source: str) -> M:
    """One section (or the whole config) from plain data, e.g. a command's flags, raising
    ConfigError with the same one-line message a config file gets."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source, model)) from None
