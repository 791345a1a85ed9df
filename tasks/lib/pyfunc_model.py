"""The registered model as MLflow sees it: a pyfunc that generates text with the adapter.

This file is logged as "model from code": MLflow runs it at load time, with loraflow's `models`
and `tasks` packages shipped beside it (code_paths), so any environment with torch, transformers,
peft and boto3 can load a registered adapter. The base model is resolved at load time from
`model_config["base_model"]`, the base as the run's config named it (an s3:// prefix, a hub id, a
directory; override it with `load_model(uri, model_config={"base_model": ...})`), and its weights
must hash to the recorded `model_config["base_model_sha256"]` unless `allow_other_base` is true
(tasks.lib.base_cache.serving_base).
"""

from __future__ import annotations

import mlflow
from mlflow.models import set_model


def _is_alpaca(value) -> bool:
    return isinstance(value, dict) and "instruction" in value


def _is_conversation(value) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and not _is_alpaca(m) for m in value)
    )


def _alpaca(row: dict) -> dict:
    """An alpaca request without the cells a table leaves empty (None, NaN)."""
    return {k: v for k, v in row.items() if isinstance(v, str)}


def _requests(model_input, fmt: str) -> list:
    """Prompts as a list.

    Through `load_model(...).predict` MLflow has already checked the input against the
    signature and made it a table: for a chat or alpaca adapter one row per request in the
    named fields of models.evaluation.serving.REQUEST_FIELDS, for the others one string column.
    Called directly (unwrap_python_model()) it also takes a string, a list of messages (one
    conversation), an alpaca request ({"instruction", "input"}) or a list of any of these.
    """
    from models.evaluation.serving import REQUEST_FIELDS, requests_from_rows

    if hasattr(model_input, "columns") and fmt in REQUEST_FIELDS:
        return requests_from_rows(model_input.to_dict(orient="records"), fmt)
    if isinstance(model_input, str) or _is_conversation(model_input):
        return [model_input]
    if _is_alpaca(model_input):
        return [_alpaca(model_input)]
    if isinstance(model_input, dict) and "messages" in model_input:
        return [list(model_input["messages"])]
    if hasattr(model_input, "iloc"):  # a pandas DataFrame or Series
        frame = model_input.to_frame() if hasattr(model_input, "to_frame") else model_input
        model_input = frame.iloc[:, 0].tolist()
    elif hasattr(model_input, "tolist"):
        model_input = model_input.tolist()
    return [
        _alpaca(v) if _is_alpaca(v) else v if _is_conversation(v) else str(v) for v in model_input
    ]


class AdapterModel(mlflow.pyfunc.PythonModel):
    """Base model + LoRA-family adapter; predict(prompts) -> generated continuations.

    Requests are rendered as the adapter was trained (its recorded data.format and the chat
    template saved with its tokenizer): a chat adapter takes prompts (one user turn) and lists
    of messages, an alpaca adapter prompts and {"instruction", "input"} requests. A request
    this model cannot take is refused with MLflow's invalid-parameter error (HTTP 400 when
    served), naming the request and its fields."""

    def load_context(self, context):
        from models.data.chat import load_prompt_format
        from models.evaluation.serving import load_adapted
        from tasks.lib.base_cache import serving_base

        config = context.model_config or {}
        self.max_new_tokens = int(config.get("max_new_tokens", 32))
        base = serving_base(
            config.get("base_model", ""),
            config.get("base_model_sha256", ""),
            allow_other=str(config.get("allow_other_base", False)).lower() == "true",
        )
        self.model, self.tokenizer = load_adapted(base, context.artifacts["adapter"])
        self.format = load_prompt_format(context.artifacts["adapter"])

    def predict(self, context, model_input, params=None):
        from mlflow.exceptions import MlflowException

        from models.data.formats import DataError
        from models.evaluation.serving import generate

        params = params or {}
        try:
            return generate(
                self.model,
                self.tokenizer,
                _requests(model_input, self.format),
                max_new_tokens=int(params.get("max_new_tokens", self.max_new_tokens)),
                fmt=self.format,
            )
        except DataError as e:
            raise MlflowException.invalid_parameter_value(str(e)) from None


set_model(AdapterModel())
