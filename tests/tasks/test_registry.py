"""Registry round trip: what a client loads from `models:/name@alias` is the trained model."""

from pathlib import Path

import mlflow
import torch

from models.loading import load_base
from models.methods import AdapterSpec, get_method
from tasks.registry import fetch_champion, promote, register_adapter
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
        metric="eval_loss",
        challenger_value=1.0,
        champion_version=None,
        champion_value=None,
        min_improvement=0.0,
    )
    assert decision.promote
    champ = fetch_champion.fn(model_name="roundtrip")
    assert champ.version == "1" and champ.base_model == str(tiny_base)
    assert (Path(champ.adapter_dir) / "adapter_model.safetensors").is_file()
    assert mlf.get_model_version("roundtrip", "1").tags["promotion.outcome"] == "promoted"
