#!/usr/bin/env bash
# One lent-GPU session of issue 25, prepared on CPU (not yet run on a device): run it from the
# repository root on the device with `.whl` carried (`make gpu-wheels` first, here), e.g.
#   run(command="bash bench/gpu_session.sh", carry=[".whl"], timeout_s=540)
# It prints the versions, `make gpu-check`'s table with the lever rows, then the pipeline row:
# `loraflow run configs/demo_gpu.yaml` in a scratch git + DVC project (Prefect's ephemeral API,
# MLflow on sqlite, DVC's local remote), the registered champion answering through
# mlflow.pyfunc on CUDA. Logs and the JSON table go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT" /tmp/site
tar -xJf .whl/site.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DO_NOT_TRACK=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1
export PREFECT_HOME=/tmp/prefect-home TOKENIZERS_PARALLELISM=false
python3 - <<'PY' 2>&1 | tee "$OUT/versions.log"
import importlib
for name in ("torch", "transformers", "peft", "accelerate", "triton", "liger_kernel", "prefect",
             "mlflow", "dvc", "pydantic"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:  # noqa: BLE001
        print(name, "MISSING", type(e).__name__, e)
import torch; print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0))
PY
timeout 330 python3 -m bench.gpu_check --json "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log"

# The pipeline row: a scratch project, as tests/conftest.py's init_project builds one.
P=/tmp/pipeline && rm -rf $P && mkdir -p $P && cp -r configs demo $P/ && cd $P || exit 1
git init -q && git config user.email gpu@example.com && git config user.name gpu
python3 -m flows.cli demo-assets 2>&1 | tail -3
python3 -m dvc init -q && python3 -m dvc config core.analytics false
python3 -m dvc remote add -d local .loraflow/dvc-remote
printf '/data\n.loraflow/\nmlflow.db\nmlartifacts/\n' > .gitignore
git add -A && git commit -q -m init
sed -i 's/max_steps: 3000/max_steps: 300/' configs/demo_gpu.yaml
timeout 200 python3 -m flows.cli run configs/demo_gpu.yaml 2>&1 | tee "$OUT/pipeline.log"
python3 - <<'PY' 2>&1 | tee -a "$OUT/pipeline.log"
import mlflow
mlflow.set_tracking_uri("sqlite:///mlflow.db")
model = mlflow.pyfunc.load_model("models:/loraflow-demo-gpu@champion")
print(model.predict(["Reverse the words: red cat sun\nAnswer:"], params={"max_new_tokens": 16}))
PY
