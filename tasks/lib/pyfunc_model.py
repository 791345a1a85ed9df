"""The registered model as MLflow sees it: a pyfunc that generates text with the adapter.

This file is logged as "model from code": MLflow runs it at load time, with loraflow's `models`
package shipped beside it (code_paths), so any environment with torch, transformers and peft can
load a registered adapter. The base model is resolved at load time from `model_config["base_model"]`
(recorded at registration; override it with `load_model(uri, model_config={"base_model": ...})`).
"""

from __future__ import annotations

import mlflow
from mlflow.models import set_model


def _prompts(model_input) -> list[str]:
    if isinstance(model_input, str):
        return [model_input]
    if hasattr(model_input, "iloc"):  # a pandas DataFrame or Series
        frame = model_input.to_frame() if hasattr(model_input, "to_frame") else model_input
        return [str(v) for v in frame.iloc[:, 0].tolist()]
    if hasattr(model_input, "tolist"):
        return [str(v) for v in model_input.tolist()]
    return [str(v) for v in model_input]


class AdapterModel(mlflow.pyfunc.PythonModel):
    """Base model + LoRA-family adapter; predict(prompts) -> generated continuations."""

    def load_context(self, context):
        from models.serving import load_adapted

        config = context.model_config or {}
        self.max_new_tokens = int(config.get("max_new_tokens", 32))
        self.model, self.tokenizer = load_adapted(
            config["base_model"], context.artifacts["adapter"]
        )

    def predict(self, context, model_input, params=None):
        from models.serving import generate

        params = params or {}
        return generate(
            self.model,
            self.tokenizer,
            _prompts(model_input),
            max_new_tokens=int(params.get("max_new_tokens", self.max_new_tokens)),
        )


set_model(AdapterModel())
