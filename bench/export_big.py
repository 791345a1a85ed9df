"""Opt-in, not part of `make bench`: the largest base this machine exports, and its peak memory.

`python -m bench.export_big [--size 7b|3b|1b] [--dir DIR]`

1. A random-weight Llama-shaped bf16 base is written file by file from its meta-device
   skeleton, never whole in memory (bench.export.write_random_base), with a LoRA adapter
   beside it: PEFT's LoRA (r=8, alpha 16, all linear layers) on the same meta skeleton, every
   A and B random (B != 0), saved as PEFT saves it. Nothing is trained: training a 7B model
   does not fit this machine, and the merge only needs the adapter's tensors.
2. moto's S3 server starts on loopback.
3. A fresh process runs the pipeline's export stage (tasks.export.merge_and_upload: the
   streamed merge, each output file uploaded as soon as it is written and then deleted,
   manifest last) and reports the growth of its peak resident set (VmHWM reset just before)
   over what it held then, with glibc returning freed memory at once (bench.workers.MEMORY_ENV).

Needs about twice the base's bytes of free disk (the base, and moto's copy of the export);
everything is deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench.export import GOAL, LARGE, BaseShape
from bench.workers import MEMORY_ENV, run_worker, worker_main
from models.export.merge import export_peak_bytes

GiB = 1 << 30
MiB = 1 << 20
# Llama-2-7B's and OpenLLaMA-3B's shapes; base files of ~2 GB, exported in files of 2GB
# (export.max_shard_size's default).
SIZES = {
    "7b": BaseShape(4096, 11008, 32, 32, shard_mb=2000, vocab=32000),
    "3b": BaseShape(3200, 8640, 26, 32, shard_mb=2000, vocab=32000),
    "1b": LARGE,
}
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _export(tmp: str, endpoint: str) -> dict:
    """The worker: the pipeline's merge-and-upload of tmp/adapter into tmp/base."""
    import peft  # noqa: F401 - libraries loaded before the measurement, as in figure 10
    import safetensors.torch  # noqa: F401
    import transformers  # noqa: F401

    from models.config.run import ExportConfig
    from models.training.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
    from tasks.export import merge_and_upload
    from tasks.lib import s3
    from tasks.registry import VersionRef

    os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": endpoint})
    s3.client().create_bucket(Bucket="exports")
    version = VersionRef(
        model_name="big",
        version="1",
        run_id="bench",
        base_model=str(Path(tmp, "base")),
        adapter_dir=str(Path(tmp, "adapter")),
        tags={},
        recorded_metrics={},
    )
    export = ExportConfig(to="s3://exports", delete_local_shards=True)
    before = rss_bytes()
    reset_peak_rss()
    started = time.perf_counter()
    result = merge_and_upload.fn(version=version, out_dir=str(Path(tmp, "out")), export=export)
    seconds = time.perf_counter() - started
    peak = peak_rss_bytes()
    listing = s3.client().list_objects_v2(Bucket="exports", Prefix="big/v1/")["Contents"]
    shards = [o["Size"] for o in listing if o["Key"].endswith(".safetensors")]
    return {
        "seconds": seconds,
        "rss_before": before,
        "peak_rss": peak,
        "growth": peak - before,
        "files": result["files"],
        "export_bytes": sum(shards),
        "export_shards": len(shards),
        "largest_export_shard": max(shards),
        "local_left": sum(p.stat().st_size for p in Path(tmp, "out").rglob("*") if p.is_file()),
    }


def _moto(port: int) -> subprocess.Popen:
    import urllib.request

    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=1)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("moto_server did not start on loopback")


def run(shape: BaseShape, workdir: str | None = None, port: int = 5399) -> list[str]:
    """Build, export, measure, clean up; the report's lines."""
    load = os.getloadavg()
    tmp = tempfile.mkdtemp(prefix="bench-export-big-", dir=workdir)
    moto = None
    try:
        started = time.perf_counter()
        sizes = run_worker("bench.export", {"build": asdict(shape), "tmp": tmp}, timeout=7200)
        built = time.perf_counter() - started
        moto = _moto(port)
        request = {"tmp": tmp, "endpoint": f"http://127.0.0.1:{port}"}
        got = run_worker("bench.export_big", request, env=MEMORY_ENV, timeout=7200)
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    largest = max(sizes["largest_file_bytes"], got["largest_export_shard"])
    estimate = export_peak_bytes(
        sizes["largest_file_bytes"], sizes["largest_adapted"], sizes["adapter_bytes"]
    )
    return [
        f"{shape.describe()}, vocab {shape.vocab or 'of the demo tokenizer'}: "
        f"{sizes['params'] / 1e9:.2f}B params, "
        f"{sizes['base_bytes'] / GiB:.2f} GiB in {sizes['files']} files (largest "
        f"{sizes['largest_file_bytes'] / GiB:.2f} GiB), written in {built:.0f} s; adapter "
        f"{sizes['adapter_bytes'] / MiB:.0f} MiB (LoRA r=8, all linear, random A and B)",
        f"export to moto S3 on loopback: {got['export_bytes'] / GiB:.2f} GiB in "
        f"{got['export_shards']} files (largest {got['largest_export_shard'] / GiB:.2f} GiB) "
        f"+ {got['files'] - got['export_shards']} others, {got['seconds']:.0f} s, local files "
        f"left {got['local_left']} bytes",
        f"peak RSS {got['peak_rss'] / GiB:.2f} GiB (VmHWM); growth {got['growth'] / GiB:.2f} GiB "
        f"over {got['rss_before'] / GiB:.2f} GiB before = {got['growth'] / largest:.2f}x the "
        f"largest file (goal <= {GOAL}x); `loraflow plan`'s estimate {estimate / GiB:.2f} GiB",
        f"load average before {load[0]:.1f}, after {os.getloadavg()[0]:.1f}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.export_big", description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="7b")
    parser.add_argument("--dir", default=None, help="where the base is written (default: TMPDIR)")
    args = parser.parse_args(argv)
    for line in run(SIZES[args.size], args.dir):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("{"):
        worker_main(_export)
    else:
        sys.exit(main())
