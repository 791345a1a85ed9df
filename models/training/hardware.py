"""The hardware and numeric environment a process computes on: what can change float results.

Two runs with the same config, data, base weights and package versions can still give
different adapter bytes when these differ: the CPU and the vector instruction set torch's
kernels dispatch to (AVX2 and AVX-512 kernels sum in different orders), the thread count
(work split differently), the math libraries in the torch build (MKL, oneDNN), and on a GPU
its model, CUDA, cuDNN and driver. `numeric_environment` collects them as short strings, for
lineage tags and for naming the likely cause when a rebuild differs.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

import torch

# Environment variables of the math libraries torch uses that change how they compute
# (instruction set, reproducibility mode); recorded only when set.
NUMERIC_VARIABLES = (
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUBLAS_WORKSPACE_CONFIG",
    "NVIDIA_TF32_OVERRIDE",
)
NOT_PRESENT = "none"


def cpu_model() -> str:
    """The CPU's model name as the OS reports it (e.g. 'AMD EPYC', 'Intel(R) Xeon(R) ...')."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.partition(":")[2].split())
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def torch_build() -> str:
    """torch's version, commit and build type, e.g. '2.13.0+cpu cf30153c4c13 release'."""
    commit = (torch.version.git_version or "")[:12]
    kind = "debug" if torch.version.debug else "release"
    return " ".join(part for part in (torch.__version__, commit, kind) if part)


def math_libraries() -> str:
    """The CPU math libraries compiled into torch with their versions, e.g. 'MKL 2024.2,
    oneDNN 3.12.0' (from torch.__config__.show())."""
    shown = torch.__config__.show()
    found = []
    mkl = re.search(r"Math Kernel Library Version ([\d.]+)", shown)
    if mkl:
        found.append(f"MKL {mkl.group(1)}")
    onednn = re.search(r"(?:MKL-DNN|oneDNN) v([\d.]+)", shown)
    if onednn:
        found.append(f"oneDNN {onednn.group(1)}")
    blas = re.search(r"BLAS_INFO=(\w+)", shown)
    if not mkl and blas:
        found.append(f"BLAS {blas.group(1)}")
    return ", ".join(found) or NOT_PRESENT


def gpu_driver() -> str:
    """The NVIDIA driver version, or 'none' where there is no NVIDIA driver."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", text)
        if match:
            return match.group(1)
    except OSError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split()
        return out[0] if out else NOT_PRESENT
    except (OSError, subprocess.SubprocessError):
        return NOT_PRESENT


def gpu_environment() -> dict[str, str]:
    """GPU model (and count), CUDA, cuDNN and driver versions; 'none' for each where absent."""
    available = torch.cuda.is_available()
    gpu = NOT_PRESENT
    if available:
        count = torch.cuda.device_count()
        gpu = torch.cuda.get_device_name(0) + (f" x{count}" if count > 1 else "")
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "gpu": gpu,
        "cuda": torch.version.cuda or NOT_PRESENT,
        "cudnn": str(cudnn) if cudnn else NOT_PRESENT,
        "gpu_driver": gpu_driver() if available else NOT_PRESENT,
    }


def numeric_environment() -> dict[str, str]:
    """What decides this process's float results besides the inputs and package versions.

    cpu_capability is the vector instruction set torch's CPU kernels dispatch to (DEFAULT,
    AVX2, AVX512, ...; lowered with ATEN_CPU_CAPABILITY); threads is torch's intra-op thread
    count at the time of the call. Set NUMERIC_VARIABLES are included as `var.<NAME>`.
    """
    env = {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": str(os.cpu_count() or 0),
        "threads": str(torch.get_num_threads()),
        "torch_build": torch_build(),
        "math_libraries": math_libraries(),
        **gpu_environment(),
    }
    env.update({f"var.{k}": os.environ[k] for k in NUMERIC_VARIABLES if k in os.environ})
    return env
