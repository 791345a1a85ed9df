"""Registered versions carry the code that registered them (code_paths): moving loraflow's own
modules around must not break versions already in a registry."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

from models.data.chat import load_prompt_format
from models.evaluation.serving import generate, load_adapted

REPO = Path(__file__).resolve().parents[2]
# A version registered by loraflow at commit 8fabc15, when models/ was one flat folder
# (models/chat.py, models/serving.py, ...): the model directory as MLflow stores it (MLmodel, the
# pyfunc file, code/models/, the adapter trained a few steps on demo/base).
BEFORE_MOVE = REPO / "tests" / "fixtures" / "version-before-models-move.tar.gz"
PROMPTS = ["Repeat the words: red cat\nAnswer:", "Repeat the words: blue dog\nAnswer:"]

# As a serving process loads it: a fresh interpreter, MLflow's public loader, the base given at
# load time (the recorded one was a path on the machine that registered it).
LOAD = """
import json, sys
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[1], model_config={"base_model": sys.argv[2]})
answers = model.predict(json.loads(sys.argv[3]), params={"max_new_tokens": 8})
print(json.dumps({"answers": list(answers), "flat": "models.serving" in sys.modules}))
"""


def test_a_version_registered_before_the_models_move_loads_and_answers_as_today(tmp_path):
    with tarfile.open(BEFORE_MOVE) as tar:
        tar.extractall(tmp_path / "version", filter="data")
    base = str(REPO / "demo" / "base")
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, str(tmp_path / "version"), base, json.dumps(PROMPTS)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded["flat"]  # it ran the code it was registered with, not today's

    adapter = tmp_path / "version" / "artifacts" / "adapter"
    model, tokenizer = load_adapted(base, str(adapter))
    today = generate(
        model, tokenizer, PROMPTS, max_new_tokens=8, fmt=load_prompt_format(str(adapter))
    )
    assert loaded["answers"] == today
    assert any(answer.strip() for answer in today)  # a real answer, not two empty strings
