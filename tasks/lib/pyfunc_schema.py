"""What the registered pyfunc takes, as MLflow records it: its signature and input example.

The signature makes the registry show the inputs and makes `mlflow models serve` refuse a
malformed request (HTTP 400 naming the field) before the model sees it. A chat or alpaca
adapter declares named, optional fields (models.evaluation.serving.REQUEST_FIELDS), one row
per request; a prompt_completion or text adapter one unnamed string column.
"""

from __future__ import annotations

import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import (
    Array,
    ColSpec,
    DataType,
    Object,
    ParamSchema,
    ParamSpec,
    Property,
    Schema,
)

from models.evaluation.serving import REQUEST_FIELDS

_MESSAGE = Object([Property("role", DataType.string), Property("content", DataType.string)])
_TYPES = {"messages": Array(_MESSAGE)}
# Small enough that validating the example at log_model (MLflow generates from it once) costs
# little; a request without max_new_tokens gets the registered default.
_EXAMPLE_PARAMS = {"max_new_tokens": 4}
_PROMPT = "Hello!"


def signature(fmt: str, max_new_tokens: int) -> ModelSignature:
    """The signature of a pyfunc serving an adapter trained on data.format `fmt`."""
    if fmt in REQUEST_FIELDS:
        inputs = Schema(
            [
                ColSpec(_TYPES.get(name, DataType.string), name, required=False)
                for name in REQUEST_FIELDS[fmt]
            ]
        )
    else:
        inputs = Schema([ColSpec(DataType.string)])
    return ModelSignature(
        inputs=inputs,
        outputs=Schema([ColSpec(DataType.string)]),
        params=ParamSchema([ParamSpec("max_new_tokens", DataType.long, max_new_tokens)]),
    )


def input_example(fmt: str) -> tuple:
    """(requests, params): for chat a prompt and a list of messages, for alpaca a prompt and an
    instruction with its input, else one prompt string. A table with an empty cell where a row
    does not use a field: the form MLflow stores and serves (dataframe_split) for mixed rows."""
    if fmt == "chat":
        rows = {
            "prompt": [_PROMPT, None],
            "messages": [None, [{"role": "user", "content": _PROMPT}]],
        }
    elif fmt == "alpaca":
        rows = {
            "prompt": [_PROMPT, None],
            "instruction": [None, "Reverse the words"],
            "input": [None, "red cat sun"],
        }
    else:
        return [_PROMPT], _EXAMPLE_PARAMS
    return pd.DataFrame(rows), _EXAMPLE_PARAMS
