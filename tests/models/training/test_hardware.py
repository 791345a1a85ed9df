"""models.training.hardware: the numeric environment a run records (CPU, ISA, threads, GPU...)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.training import hardware
from tests.conftest import REPO

KEYS = {
    "cpu", "cpu_capability", "cpu_count", "threads", "torch_build", "math_libraries",
    "gpu", "cuda", "cudnn", "gpu_driver",
}  # fmt: skip


def test_environment_has_every_key_as_a_short_string():
    env = hardware.numeric_environment()
    assert KEYS <= set(env)
    for key, value in env.items():
        assert isinstance(value, str) and value, key
        assert len(value) <= 120 and "\n" not in value, (key, value)  # fits an MLflow tag line


def test_environment_reports_what_torch_dispatches_to_and_its_threads():
    env = hardware.numeric_environment()
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["cpu_count"] == str(os.cpu_count())
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert hardware.numeric_environment()["threads"] == "1"
    finally:
        torch.set_num_threads(before)
    assert hardware.numeric_environment()["threads"] == str(before)
    assert env["torch_build"].startswith(torch.__version__ + " ")
    assert env["torch_build"].endswith("debug" if torch.version.debug else "release")


def test_cpu_model_is_the_one_the_os_reports():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo")
    names = [
        " ".join(line.partition(":")[2].split())
        for line in cpuinfo.read_text().splitlines()
        if line.startswith("model name")
    ]
    if not names:
        pytest.skip("/proc/cpuinfo names no model")
    assert hardware.cpu_model() == names[0]


def test_math_libraries_name_mkl_when_torch_has_it():
    libraries = hardware.math_libraries()
    if torch.backends.mkl.is_available():
        assert libraries.startswith("MKL 20"), libraries
    if torch.backends.mkldnn.is_available():
        assert "oneDNN 3." in libraries or "oneDNN" in libraries, libraries


def test_gpu_fields_are_none_without_cuda_and_named_with_it():
    env = hardware.gpu_environment()
    if torch.cuda.is_available():
        assert env["gpu"].startswith(torch.cuda.get_device_name(0))
        assert env["cuda"] == torch.version.cuda
        assert env["gpu_driver"] != hardware.NOT_PRESENT
    else:
        assert env["gpu"] == env["gpu_driver"] == hardware.NOT_PRESENT
        assert env["cuda"] == (torch.version.cuda or hardware.NOT_PRESENT)


def test_a_lowered_dispatch_level_and_its_variable_are_recorded():
    # ATEN_CPU_CAPABILITY is read once per process: a fresh interpreter sees the lowered level.
    code = "import json, models.training.hardware as h; print(json.dumps(h.numeric_environment()))"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout
    got = json.loads(out)
    assert got["cpu_capability"] == "DEFAULT"
    assert got["var.ATEN_CPU_CAPABILITY"] == "default" and got["var.MKL_CBWR"] == "COMPATIBLE"
    # Here only the variables that are set are recorded, with their values.
    here = hardware.numeric_environment()
    assert {k: v for k, v in here.items() if k.startswith("var.")} == {
        f"var.{k}": os.environ[k] for k in hardware.NUMERIC_VARIABLES if k in os.environ
    }
