"""The dispatched training flow: a data version by md5 in, the adapter on the MLflow run out."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from models.config.run import config_from_dict
from models.hashing import file_sha256
from models.training.hardware import numeric_environment


def tiny_config(tiny_base, **training):
    return config_from_dict(
        {
            "base_model": str(tiny_base),
            "data": {"path": "data", "max_seq_len": 64},
            "adapter": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj"]},
            "training": {
                "max_steps": 4,
                "batch_size": 4,
                "warmup_steps": 0,
                "logging_steps": 2,
                **training,
            },
        }
    )


def pushed_version(project, kept):
    """Version and push data/; then only the DVC remote holds it (no data/, no DVC cache)."""
    from tasks.data import push_data, version_data

    dataset = version_data.fn(data_dir="data")
    push_data.fn(dataset=dataset)
    shutil.move(project / "data", kept)
    shutil.rmtree(project / ".dvc" / "cache")
    return dataset


def new_run() -> str:
    from tasks.tracking import open_run

    return open_run.fn(experiment="dispatch", run_name="r", config={}, config_yaml="{}\n", tags={})


def test_train_remote_trains_the_pushed_version_and_publishes_the_adapter(
    project, tiny_base, prefect_harness, tmp_path
):
    from prefect.client.orchestration import get_client

    from flows.train import train_remote
    from tasks.tracking import client
    from tasks.train import fetch_trained_adapter

    kept = tmp_path / "data"
    dataset = pushed_version(project, kept)
    # The worker trains with another thread count than this process runs with.
    threads = torch.get_num_threads() + 1
    config = tiny_config(tiny_base, cpu_threads=threads)
    run_id = new_run()
    state = train_remote(config, run_id=run_id, data_md5=dataset.md5, return_state=True)
    sha = state.result()
    assert len(sha) == 64
    with get_client(sync_client=True) as prefect_client:
        flow_run = prefect_client.read_flow_run(state.state_details.flow_run_id)
    assert flow_run.name == f"train-lora-{dataset.md5[:8]}"

    # The pipeline's side: it gets the adapter back from the run, hash-checked.
    fetched = fetch_trained_adapter.fn(run_id=run_id, dest=str(tmp_path / "fetched"))
    assert fetched.adapter_sha256 == sha
    assert file_sha256(Path(fetched.adapter_dir) / "adapter_model.safetensors") == sha
    assert fetched.steps == 4 and fetched.train_loss > 0
    assert [s for s, _ in fetched.loss_history] == [2, 4]
    # ... with the environment it was trained in, for the run's and the version's env.* tags.
    assert fetched.environment == {**numeric_environment(), "threads": str(threads)}
    assert fetched.tags()["env.threads"] == str(threads) != str(torch.get_num_threads())
    assert not Path(fetched.adapter_dir).is_relative_to(project / ".loraflow" / "runs")
    # The resolved config beside it says which data version it was trained on.
    recorded = yaml.safe_load((Path(fetched.adapter_dir) / "loraflow.yaml").read_text())
    key = dataset.md5.removesuffix(".dir")
    assert Path(recorded["data"]["path"]).parts[-3:] == ("data-versions", key, "data")
    # The loss curve went to the run while training.
    history = client().get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == [2, 4]

    # Trained here on the same data with the same config: the same adapter, bit for bit.
    from tasks.train import train

    local_config = config.with_data_dir(str(kept))
    local = train.fn(
        local_config.train_spec(str(tiny_base)),
        run_id="local",
        output_dir=local_config.adapter_dir("local"),
        config_yaml=local_config.to_yaml(),
        log_to_run=False,
    )
    assert local.adapter_sha256 == sha


def test_checkpoints_of_a_dispatched_training_are_written_then_cleared(
    project, tiny_base, prefect_harness, tmp_path, monkeypatch
):
    from flows.train import train_remote
    from models.training.checkpoints import checkpoint_step
    from tasks.lib import checkpoint_store

    dataset = pushed_version(project, tmp_path / "data")
    plain = tiny_config(tiny_base)
    config = tiny_config(tiny_base, save_steps=2)
    saved, real_save = [], checkpoint_store.save

    def save(store, checkpoint):  # the real save, watched
        saved.append(
            (store.key, checkpoint_step(checkpoint), (checkpoint / "trainer_state.json").is_file())
        )
        real_save(store, checkpoint)

    monkeypatch.setattr(checkpoint_store, "save", save)
    sha = train_remote(config, run_id=new_run(), data_md5=dataset.md5, checkpoint_key="k-1")
    assert saved == [("k-1", 2, True), ("k-1", 4, True)]
    # Published, so its checkpoints are gone; checkpointing did not change what was trained.
    assert not (project / ".loraflow" / "checkpoints" / "k-1").exists()
    assert sha == train_remote(plain, run_id=new_run(), data_md5=dataset.md5)


def test_a_dispatched_training_evaluates_where_it_trained(
    project, tiny_base, prefect_harness, tmp_path
):
    """with_evaluation: base and adapter are scored in the training flow run (on the gpu pool in
    a team setup) and the report comes back on the MLflow run, the figures an evaluation of the
    same adapter and data here gives."""
    from flows.train import train_remote
    from models.evaluation.evaluate import evaluate_candidates
    from tasks.evaluate import fetch_evaluation
    from tasks.train import fetch_trained_adapter

    kept = tmp_path / "data"
    dataset = pushed_version(project, kept)
    plain = tiny_config(tiny_base)
    config = plain.model_copy(
        update={
            "evaluation": plain.evaluation.model_copy(
                update={"max_examples": 6, "max_new_tokens": 4, "metrics": ["exact_match", "chrf"]}
            )
        }
    )
    run_id = new_run()
    train_remote(config, run_id=run_id, data_md5=dataset.md5, with_evaluation=True)
    report = fetch_evaluation.fn(run_id=run_id, dest=str(tmp_path / "fetched"))
    assert set(report) == {"base", "adapter"}
    adapter = fetch_trained_adapter.fn(run_id=run_id, dest=str(tmp_path / "fetched"))
    candidates = {"base": (str(tiny_base), None), "adapter": (str(tiny_base), adapter.adapter_dir)}
    here = evaluate_candidates(candidates, config.with_data_dir(str(kept)).eval_spec())
    for name in here:
        assert report[name].keys() == here[name].keys()
        for key, value in here[name].items():
            assert report[name][key] == pytest.approx(value, rel=1e-6), (name, key)
