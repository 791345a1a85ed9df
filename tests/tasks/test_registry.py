"""Registry round trip: what a client loads from `models:/name@alias` is the trained model."""

from pathlib import Path

import mlflow
import pytest
import torch

from models.base_model.loading import load_base
from models.methods import AdapterSpec, get_method
from models.registry.promotion import Gate
from tasks.promotion import promote
from tasks.registry import fetch_champion, register_adapter
from tasks.tracking import client, open_run

SPEC = AdapterSpec(r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj", "v_proj"], seed=0)


def trained_adapter(tiny_base, out_dir):
    """A LoRA adapter after a few real optimizer steps, saved like the pipeline saves it."""
    base, tok = load_base(str(tiny_base))
    model = get_method("lora").build(base, SPEC)
    ids = tok(["the red cat sat", "a dog ran far away"], padding=True, return_tensors="pt")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        model(**ids, labels=ids["input_ids"]).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    with torch.no_grad():
        logits = model(**ids).logits
    return ids, logits


def register_with_format(base: Path, adapter: Path, data, tokenizer=None) -> str:
    """`adapter` registered as model `<data.format>` with its format recorded beside it, as
    training leaves it (a chat adapter also with `tokenizer`, saved with its chat template);
    its version."""
    from models.data.chat import prepare_tokenizer, save_prompt_format

    if tokenizer is not None:
        prepare_tokenizer(tokenizer, data).save_pretrained(adapter)
    save_prompt_format(adapter, data)
    run_id = open_run.fn(experiment="t", run_name=data.format, config={}, config_yaml="", tags={})
    return register_adapter.fn(
        run_id=run_id,
        adapter_dir=str(adapter),
        base_model=str(base),
        model_name=data.format,
        tags={"adapter_sha256": data.format},
        max_new_tokens=4,
    )


def register_as_chat(base: Path, adapter: Path, tokenizer) -> str:
    """`adapter` as a ChatML chat adapter, registered as model `chat`; its version."""
    from models.config.specs import DataSpec

    return register_with_format(base, adapter, DataSpec(format="chat", chat_template="chatml"),
                                tokenizer)  # fmt: skip


def test_register_then_load_by_alias_gives_identical_logits(project, tiny_base, prefect_harness):
    ids, expected = trained_adapter(tiny_base, project / "adapter")
    run_id = open_run.fn(
        experiment="t", run_name="r", config={"a": 1}, config_yaml="a: 1\n", tags={"k": "v"}
    )
    tags = {"data_md5": "abc", "adapter_sha256": "def", "base_model": str(tiny_base)}
    version = register_adapter.fn(
        run_id=run_id,
        adapter_dir=str(project / "adapter"),
        base_model=str(tiny_base),
        model_name="roundtrip",
        tags=tags,
        max_new_tokens=4,
    )
    assert version == "1"
    mlf = client()
    mv = mlf.get_model_version_by_alias("roundtrip", "challenger")
    assert str(mv.version) == "1" and mv.tags["data_md5"] == "abc" and mv.run_id == run_id
    # The embedded store keeps artifacts beside the database in the working directory.
    assert (project / "mlflow.db").is_file() and (project / "mlartifacts").is_dir()

    loaded = mlflow.pyfunc.load_model("models:/roundtrip@challenger")
    inner = loaded.unwrap_python_model()
    with torch.no_grad():
        got = inner.model(**ids).logits
    assert torch.equal(got, expected)
    texts = loaded.predict(["the red cat", "a dog"], params={"max_new_tokens": 3})
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)

    # No champion yet; after promotion, fetch_champion finds it with its adapter on disk.
    assert fetch_champion.fn(model_name="roundtrip") is None
    decision = promote.fn(
        model_name="roundtrip",
        version=version,
        gate=Gate("eval_loss"),
        challenger={"eval_loss": 1.0},
        champion_version=None,
        champion=None,
    )
    assert decision.promote
    champ = fetch_champion.fn(model_name="roundtrip")
    assert champ.version == "1" and champ.base_model == str(tiny_base)
    assert (Path(champ.adapter_dir) / "adapter_model.safetensors").is_file()
    assert mlf.get_model_version("roundtrip", "1").tags["promotion.outcome"] == "promoted"


def test_a_chat_adapter_is_served_from_a_prompt_or_a_list_of_messages(
    project, tiny_base, prefect_harness
):
    """Rendered through the registered pyfunc as training rendered it: the template and the
    format travel in the adapter folder."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from models.evaluation.serving import generate, load_adapted

    adapter = project / "chat-adapter"
    trained_adapter(tiny_base, adapter)
    register_as_chat(tiny_base, adapter, load_adapted(str(tiny_base), adapter)[1])
    loaded = mlflow.pyfunc.load_model("models:/chat@challenger")
    conversation = [
        {"role": "user", "content": "the red cat"},
        {"role": "assistant", "content": "sat"},
        {"role": "user", "content": "a dog"},
    ]
    model, served_tok = load_adapted(str(tiny_base), adapter)
    expected = generate(model, served_tok, [conversation, "a dog"], max_new_tokens=4, fmt="chat")
    params = {"max_new_tokens": 4}
    assert loaded.predict(conversation, params=params) == expected[:1]
    assert loaded.predict({"prompt": "a dog"}, params=params) == expected[1:]
    assert loaded.predict([{"role": "user", "content": "a dog"}], params=params) == expected[1:]
    assert loaded.predict({"messages": conversation}, params=params) == expected[:1]
    # One request per row, each a prompt or a conversation (the signature's named fields).
    rows = pd.DataFrame({"prompt": [None, "a dog"], "messages": [conversation, None]})
    assert loaded.predict(rows, params=params) == expected
    # A bare string has no field name: MLflow drops it and the model says what it takes.
    with pytest.raises(MlflowException, match="no request: a chat adapter takes one of prompt"):
        loaded.predict("a dog", params=params)
    with pytest.raises(MlflowException, match="Missing required properties.*content"):
        loaded.predict({"messages": [{"role": "user"}]}, params=params)

    # What the version page shows: the inputs (not "Inputs (0)") and an example that loads
    # and is answered, a prompt and a list of messages.
    info = mlflow.models.get_model_info("models:/chat/1")
    assert info.signature.inputs.input_names() == ["prompt", "messages", "role", "content"]
    assert info.signature.params.to_dict()[0]["default"] == 4  # the registered max_new_tokens
    example = loaded.input_example
    assert example["prompt"][0] == "Hello!"
    assert example["messages"][1] == [{"role": "user", "content": "Hello!"}]
    assert loaded.predict(example, params=params) == generate(
        model, served_tok, ["Hello!", [{"role": "user", "content": "Hello!"}]], max_new_tokens=4,
        fmt="chat",
    )  # fmt: skip


def test_an_alpaca_adapter_is_served_from_instruction_and_input(
    project, tiny_base, prefect_harness
):
    """An alpaca request with an input, as a dict, a list of dicts or a DataFrame, is answered
    from the prompt training rendered (evaluation's path: the record's rendered prompt)."""
    import pandas as pd

    from models.config.specs import DataSpec
    from models.data.formats import alpaca_prompt
    from models.evaluation.serving import generate, load_adapted

    adapter = project / "alpaca-adapter"
    trained_adapter(tiny_base, adapter)
    register_with_format(tiny_base, adapter, DataSpec(format="alpaca"))
    loaded = mlflow.pyfunc.load_model("models:/alpaca@challenger")
    model, tok = load_adapted(str(tiny_base), adapter)
    prompts = [alpaca_prompt("Reverse the words", "red cat"), alpaca_prompt("Name a colour")]
    expected = generate(model, tok, prompts, max_new_tokens=4)
    requests = [
        {"instruction": "Reverse the words", "input": "red cat"},
        {"instruction": "Name a colour"},
    ]
    params = {"max_new_tokens": 4}
    assert loaded.predict(requests[0], params=params) == expected[:1]
    assert loaded.predict(requests, params=params) == expected
    assert loaded.predict(pd.DataFrame(requests), params=params) == expected  # input NaN: none
    assert loaded.predict({"prompt": "Name a colour"}, params=params) == expected[1:]


def fail_once(monkeypatch, owner, name: str, error: Exception) -> list:
    """owner.name raises `error` on its first call only; returns the list of calls made."""
    real, calls = getattr(owner, name), []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, flaky)
    return calls


def test_registration_is_all_or_nothing_and_safe_to_retry(
    project, tiny_base, prefect_harness, monkeypatch
):
    """A failed upload leaves no version; a failure after the version exists (the alias call)
    is retried into that same version, never a second one."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    from models.hashing import file_sha256
    from tasks.registry import RegistryError

    trained_adapter(tiny_base, project / "adapter")
    sha = file_sha256(project / "adapter" / "adapter_model.safetensors")
    run_id = open_run.fn(experiment="t", run_name="r", config={}, config_yaml="{}\n", tags={})
    tags = {"data_md5": "d" * 32, "adapter_sha256": sha, "base_model": str(tiny_base)}
    kwargs = dict(
        run_id=run_id, adapter_dir=str(project / "adapter"), base_model=str(tiny_base),
        model_name="atomic", tags=tags, max_new_tokens=4,
    )  # fmt: skip
    mlf = client()

    # 1. Uploading the artifacts fails: no version appears.
    fail_once(monkeypatch, LocalArtifactRepository, "log_artifacts", OSError("connection reset"))
    with pytest.raises(OSError, match="connection reset"):
        register_adapter.fn(**kwargs)
    assert mlf.search_model_versions("name = 'atomic'") == []

    # 2. The version is created, then setting its alias fails once: the task's retry finds the
    # version this run made and finishes it.
    calls = fail_once(
        monkeypatch, MlflowClient, "set_registered_model_alias",
        MlflowException("injected: connection reset by peer"),
    )  # fmt: skip
    monkeypatch.setattr(register_adapter, "retry_delay_seconds", [0.1, 0.1, 0.1])
    state = register_adapter(**kwargs, return_state=True)
    assert state.is_completed() and state.result() == "1" and len(calls) == 2
    versions = mlf.search_model_versions("name = 'atomic'")
    assert [str(v.version) for v in versions] == ["1"]
    assert {k: versions[0].tags[k] for k in tags} == tags
    assert str(mlf.get_model_version_by_alias("atomic", "challenger").version) == "1"
    local = mlflow.artifacts.download_artifacts(artifact_uri="models:/atomic/1")
    assert file_sha256(Path(local) / "artifacts/adapter/adapter_model.safetensors") == sha

    # 3. Registering the same run's adapter again registers nothing new.
    assert register_adapter.fn(**kwargs) == "1"
    assert len(mlf.search_model_versions("name = 'atomic'")) == 1
    # A name MLflow would refuse never reaches it, and is not worth a retry.
    with pytest.raises(RegistryError, match="'a/b' is not a valid model name") as err:
        register_adapter.fn(**{**kwargs, "model_name": "a/b"})
    assert not err.value.retryable


def two_versions(mlf, name: str) -> None:
    experiment = mlf.create_experiment(name)
    mlf.create_registered_model(name)
    for score in (0.5, 0.7):
        run_id = mlf.create_run(experiment).info.run_id
        mlf.log_metric(run_id, "adapter_exact_match", score)
        mlf.create_model_version(name, f"runs:/{run_id}/adapter", run_id)
    mlf.set_registered_model_alias(name, "champion", "1")


def test_an_expired_promotion_lock_is_broken_and_a_live_one_waited_for(
    project, monkeypatch, caplog
):
    """A crashed promoter's lock does not block promotions past its lease; a live holder makes
    the next promotion wait, then fail in one line naming the lock."""
    import time

    from tasks.lib import promotion_lock
    from tasks.tracking import TrackingError

    mlf = client()
    two_versions(mlf, "locked")
    lock = promotion_lock.lock_name("locked")
    args = dict(
        model_name="locked", version="2", gate=Gate("exact_match"),
        challenger={"exact_match": 0.7}, champion_version="1", champion={"exact_match": 0.5},
    )  # fmt: skip

    dead = {promotion_lock.OWNER: "host:1:dead", promotion_lock.EXPIRES: f"{time.time():.3f}"}
    mlf.create_registered_model(lock, tags=dead)
    assert promote.fn(**args).promote  # the expired lock was broken
    assert f"broke the expired promotion lock {lock} held by host:1:dead" in caplog.text
    assert str(mlf.get_model_version_by_alias("locked", "champion").version) == "2"
    assert [m.name for m in mlf.search_registered_models("name LIKE 'locked.%'")] == []

    monkeypatch.setattr(promotion_lock, "WAIT_S", 1.0)
    alive = {promotion_lock.OWNER: "host:2:alive", promotion_lock.EXPIRES: f"{time.time() + 60}"}
    mlf.create_registered_model(lock, tags=alive)
    with pytest.raises(TrackingError) as err:
        promote.fn(
            **{**args, "version": "1", "challenger": {"exact_match": 0.9}, "champion_version": "2"}
        )
    assert str(err.value) == f"registered model {lock}: promotion lock still held after 1 s"
    assert str(mlf.get_model_version_by_alias("locked", "champion").version) == "2"
    assert "promotion.outcome" not in mlf.get_model_version("locked", "1").tags


def test_a_retried_promotion_whose_alias_was_set_counts_as_promoted(
    project, prefect_harness, monkeypatch
):
    """The alias is set but its answer is lost: the task's retry finds the version already
    champion, which counts as promoted (the pipeline exports it), and keeps the record the
    first attempt wrote before moving the alias."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    mlf = client()
    two_versions(mlf, "retried")
    real, calls = MlflowClient.set_registered_model_alias, []

    def set_then_lose_the_answer(self, *args):
        calls.append(args)
        real(self, *args)
        if len(calls) == 1:
            raise MlflowException("injected: connection reset by peer")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", set_then_lose_the_answer)
    monkeypatch.setattr(promote, "retry_delay_seconds", [0.1, 0.1, 0.1])
    state = promote(
        model_name="retried", version="2", gate=Gate("exact_match"),
        challenger={"exact_match": 0.7}, champion_version="1", champion={"exact_match": 0.5},
        return_state=True,
    )  # fmt: skip
    assert state.is_completed(), state
    decision = state.result()
    assert decision.promote and decision.reason == "v2 is already the champion"
    assert len(calls) == 1  # the retry moved nothing
    assert str(mlf.get_model_version_by_alias("retried", "champion").version) == "2"
    tags = mlf.get_model_version("retried", "2").tags
    assert tags["promotion.outcome"] == "promoted"
    assert tags["promotion.reason"] == (
        "exact_match 0.7000 vs champion 0.5000: better (gain +0.2000, needed > 0)"
    )
    assert not mlf.search_registered_models("name LIKE 'retried.%'")  # the lock was released
