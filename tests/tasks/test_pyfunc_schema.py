"""A registered chat adapter served by `mlflow models serve`: the signature's fields are what
the server takes, and a malformed request is refused with HTTP 400 naming the field."""

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from models.base_model.loading import load_base
from models.methods import AdapterSpec, get_method
from tests.conftest import served_model
from tests.tasks.test_registry import register_as_chat

SPEC = AdapterSpec(r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj", "v_proj"], seed=0)
CONVERSATION = [{"role": "user", "content": "red cat"}]


def registered_chat_adapter(base: Path, out: Path) -> str:
    """A chat adapter (untrained: serving only needs its files) registered as chat v1."""
    model, tok = load_base(str(base))
    get_method("lora").build(model, SPEC).save_pretrained(out)
    return register_as_chat(base, out, tok)


def serving_example(version: str) -> str:
    """The version's input example as the JSON body of a request."""
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model, convert_input_example_to_serving_input

    local = download_artifacts(f"models:/chat/{version}")
    return convert_input_example_to_serving_input(Model.load(local).load_input_example(local))


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_mlflow_models_serve_takes_the_signature_and_refuses_a_malformed_request(
    project, tiny_base, prefect_harness
):
    version = registered_chat_adapter(tiny_base, project / "adapter")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    with served_model(f"models:/chat/{version}", project, env) as url:
        # The stored input example, as a request: a prompt and a list of messages.
        status, answer = post(f"{url}/invocations", json.loads(serving_example(version)))
        assert status == 200, answer
        assert len(answer["predictions"]) == 2
        # Rows of named fields, each a prompt or a conversation (null for the other field).
        rows = [{"prompt": "red cat", "messages": None}, {"prompt": None, "messages": CONVERSATION}]
        body = {"dataframe_records": rows, "params": {"max_new_tokens": 2}}
        status, answer = post(f"{url}/invocations", body)
        assert status == 200, answer
        assert len(answer["predictions"]) == 2
        # A bare list of messages (one conversation) is a table of role/content rows.
        status, answer = post(f"{url}/invocations", {"inputs": CONVERSATION})
        assert status == 200, answer
        assert len(answer["predictions"]) == 1

        # A message without its content: refused by the schema, the field named.
        bad = {"dataframe_records": [{"messages": [{"role": "user"}]}]}
        status, answer = post(f"{url}/invocations", bad)
        assert status == 400 and "Missing required properties: {'content'}" in answer["message"]
        # A bare string has no field: refused by the model, saying what it takes.
        status, answer = post(f"{url}/invocations", {"inputs": "red cat"})
        assert status == 400 and "takes one of prompt (a string) or messages" in answer["message"]
