"""The `data` section of the run configuration: where the splits live and what shape they have.

Its own module so models/config/run.py stays one screenful per section; LoraflowConfig nests it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SPLIT_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# data.source: the stores whose reads record an exact version (S3 ETags / version ids, file md5s).
SOURCE_SCHEMES = ("", "file", "s3")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the train/eval splits live and how examples are turned into tokens."""

    path: str = Field(
        "data", description="Directory holding the train/eval split files (versioned by DVC)."
    )
    train_file: str = Field(
        "train.jsonl",
        description="Train split file name inside `path` (no absolute path, no '..'); "
        "JSONL, JSON (a list of objects), CSV or Parquet, by its extension.",
    )
    eval_file: str = Field(
        "eval.jsonl",
        description="Eval split file name inside `path` (no absolute path, no '..'); same "
        "file types as train_file.",
    )
    format: Literal["prompt_completion", "chat", "alpaca", "text"] = Field(
        "prompt_completion",
        description="Shape of an example: prompt_completion (prompt_field, completion_field), "
        "chat (a list of messages, rendered with the chat template), alpaca (instruction, "
        "input, output) or text (text_field, every token trained).",
    )
    prompt_field: str = Field(
        "prompt", description="prompt_completion: field holding the model input."
    )
    completion_field: str = Field(
        "completion", description="prompt_completion: field holding the target."
    )
    text_field: str = Field("text", description="text: field holding the text to model.")
    messages_field: str = Field(
        "messages",
        description="chat: field holding the list of messages (ShareGPT: conversations).",
    )
    role_field: str = Field(
        "role", description="chat: message field naming the role (ShareGPT: from)."
    )
    content_field: str = Field(
        "content", description="chat: message field holding the text (ShareGPT: value)."
    )
    role_names: dict[str, Literal["system", "user", "assistant"]] = Field(
        default_factory=dict,
        description="chat: the file's role names mapped to system/user/assistant, e.g. "
        "{human: user, gpt: assistant}; names already standard need no entry.",
    )
    chat_template: str | None = Field(
        None,
        description="chat: a Jinja chat template file, or a built-in (chatml); empty = the "
        "tokenizer's own template (a chat run is refused when the tokenizer has none). Saved "
        "with the adapter's tokenizer, so serving renders exactly as training did. Other "
        "formats do not use it.",
    )
    train_on: Literal["assistant", "last", "all"] = Field(
        "assistant",
        description="chat: tokens in the loss: every assistant turn with its end-of-turn "
        "token (assistant), only the last assistant turn (last), or every token (all).",
    )
    max_seq_len: int = Field(128, ge=8, description="Max tokens of an example, eos included.")
    too_long: Literal["truncate", "reject"] = Field(
        "reject", description="What to do with examples longer than max_seq_len."
    )
    dvc_remote: str | None = Field(
        None, description="DVC remote to push the data to (default: the repo's default remote)."
    )
    source: str | None = Field(
        None,
        description="Where new data lands: an s3://bucket/prefix, or a local or shared "
        "directory (a path or file:// URL). Each run first makes `path` an exact copy of it "
        "(the ETags / version ids read are recorded on the run and version), then versions it "
        "with DVC. Empty: `path` is used as it is.",
    )

    @field_validator("source")
    @classmethod
    def _source_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        scheme = v.split("://", 1)[0] if "://" in v else ""
        if scheme not in SOURCE_SCHEMES:
            raise ValueError(
                f"must be an s3://bucket/prefix URL or a directory (path or file://); got {v!r}"
            )
        if scheme == "s3" and not v[5:].split("/", 1)[0]:
            raise ValueError(f"must name a bucket: s3://bucket/prefix (got {v!r})")
        return v

    @field_validator("train_file", "eval_file")
    @classmethod
    def _inside_data_dir(cls, v: str) -> str:
        # A split is read from data.path and versioned with it: it cannot live elsewhere.
        parts = Path(v).parts
        if not parts or Path(v).is_absolute() or ".." in parts:
            raise ValueError(f"must be a file inside data.path (got {v!r})")
        if Path(v).suffix.lower() not in SPLIT_SUFFIXES:
            raise ValueError(f"must end in one of {', '.join(SPLIT_SUFFIXES)} (got {v!r})")
        return v
