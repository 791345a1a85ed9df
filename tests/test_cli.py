"""The `loraflow` command as a user runs it: bad input fails fast and clean; the demo runs."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LORAFLOW = str(Path(sys.executable).parent / "loraflow")


def loraflow(*args, cwd):
    return subprocess.run([LORAFLOW, *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def write_config(project, tiny_base, **sections):
    raw = {
        "base_model": str(tiny_base),
        "data": {"path": "data", "max_seq_len": 64},
        "adapter": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
        "training": {"max_steps": 2, "batch_size": 4},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    path = project / "run.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    return path


def break_train(project, content: bytes):
    (project / "data" / "train.jsonl").write_bytes(content)


BAD_INPUTS = [
    (
        "malformed json",
        {},
        b'{"prompt": "a", "completion": "b"}\n{"prompt": \n',
        "train.jsonl:2: malformed JSON",
    ),
    ("missing field", {}, b'{"prompt": "a"}\n', "train.jsonl:1: missing field 'completion'"),
    ("empty split", {}, b"", "train.jsonl: split is empty"),
    (
        "unknown method",
        {"adapter": {"method": "lora_xl"}},
        None,
        "adapter.method: unknown method 'lora_xl'",
    ),
    ("rank below one", {"adapter": {"r": 0}}, None, "adapter.r: must be >= 1 (got 0)"),
    (
        "missing base model",
        {"base_model": "./no/such/model"},
        None,
        "base_model ./no/such/model: directory not found",
    ),
    (
        "targets match nothing",
        {"adapter": {"target_modules": ["query_key_value"]}},
        None,
        "['query_key_value'] match no module of the base model; its linear layers are:",
    ),
    ("unknown key", {"trainingg": {"max_steps": 1}}, None, "unknown key 'trainingg'"),
]


@pytest.mark.parametrize(
    ("sections", "train", "message"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_fails_in_one_line_and_writes_nothing(
    project, tiny_base, sections, train, message
):
    if train is not None:
        break_train(project, train)
    cfg = write_config(project, tiny_base, **sections)
    proc = loraflow("run", str(cfg), cwd=project)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("loraflow: error: ") and message in lines[0]
    # Nothing trained, registered or pushed.
    assert not (project / "mlflow.db").exists()
    assert not (project / ".loraflow" / "dvc-remote").exists()
    assert not (project / "data.dvc").exists()


def test_set_overrides_are_validated_too(project, tiny_base):
    cfg = write_config(project, tiny_base)
    proc = loraflow("check", str(cfg), "--set", "adapter.dropout=1.5", cwd=project)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"loraflow: error: {cfg}: adapter.dropout: must be in [0, 1) (got 1.5)"
    )
    ok = loraflow("check", str(cfg), "--set", "adapter.r=16", cwd=project)
    assert ok.returncode == 0, ok.stderr
    assert "train: 256 examples" in ok.stdout and ok.stdout.strip().endswith("ok")


def test_demo_config_end_to_end_then_registry_serves_champion(project, tiny_base):
    """`loraflow run configs/demo.yaml` (small budget, tiny base) and a real client afterwards."""
    shutil.copytree(REPO / "configs", project / "configs")
    proc = loraflow(
        "run",
        "configs/demo.yaml",
        "--set",
        f"base_model={tiny_base}",
        "--set",
        "training.max_steps=20",
        "--set",
        "evaluation.max_examples=16",
        cwd=project,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "registered loraflow-demo v1 (challenger): promoted to champion" in proc.stdout

    code = (
        "import json, mlflow\n"
        "from mlflow import MlflowClient\n"
        "mv = MlflowClient().get_model_version_by_alias('loraflow-demo', 'champion')\n"
        "m = mlflow.pyfunc.load_model('models:/loraflow-demo@champion')\n"
        "out = m.predict(['Reverse the words: a b c'], params={'max_new_tokens': 4})\n"
        "print(json.dumps({'version': str(mv.version), 'tags': mv.tags, 'out': out}))\n"
    )
    client = subprocess.run(
        [sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=300
    )
    assert client.returncode == 0, client.stderr[-3000:]
    result = json.loads(client.stdout.strip().splitlines()[-1])
    assert result["version"] == "1"
    assert result["tags"]["method"] == "lora"
    assert len(result["out"]) == 1 and isinstance(result["out"][0], str)
