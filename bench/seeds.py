"""`python -m bench.seeds`: the demo config trained and evaluated for adapter.seed 0-4.

Is the demo robust or lucky? Each seed trains configs/demo.yaml's adapter on the shipped base
and demo data in a fresh process (the pipeline's train_adapter and evaluation, no tracking) and
is evaluated on the eval split; the table shows eval loss, perplexity, exact match, adapter
sha256 and training time per seed. `--set` overrides config keys as `loraflow run` does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from bench.assets import DEMO_CONFIG, require_demo_assets
from bench.workers import run_worker


def _work(config_file: str, overrides: list[str], out: str, threads: int) -> dict:
    import dataclasses

    from models.base_model.paths import canonical_base
    from models.config.file import load_config
    from models.evaluation.evaluate import evaluate_candidates
    from models.training.train import train_adapter

    config = load_config(config_file, overrides)
    base = canonical_base(config.base_model)
    spec = dataclasses.replace(
        config.train_spec(base), device="cpu", cpu_threads=threads or config.training.cpu_threads
    )
    result = train_adapter(spec, output_dir=out)
    report = evaluate_candidates({"adapter": (base, result.adapter_dir)}, config.eval_spec())
    return {
        **report["adapter"],
        "adapter_sha256": result.adapter_sha256,
        "train_seconds": result.train_seconds,
    }


def sweep(seeds: list[int], overrides: list[str], jobs: int, threads: int) -> dict[int, dict]:
    """seed -> figures, each seed in its own worker process, `jobs` at a time."""
    require_demo_assets()
    with tempfile.TemporaryDirectory(prefix="bench-seeds-") as tmp:

        def one(seed: int) -> dict:
            request = {
                "config_file": str(DEMO_CONFIG),
                "overrides": [*overrides, f"adapter.seed={seed}"],
                "out": f"{tmp}/seed-{seed}",
                "threads": threads,
            }
            return run_worker("bench.seeds", request, timeout=3600)

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            return dict(zip(seeds, pool.map(one, seeds), strict=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.seeds", description=__doc__)
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated adapter seeds")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at the same time")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per seed (0: the config's)"
    )
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows = sweep(seeds, args.overrides, args.jobs, args.threads)
    print(f"configs/demo.yaml {' '.join(args.overrides)}".rstrip())
    print("| adapter.seed | eval_loss | perplexity | exact_match | adapter sha256 | train s |")
    print("|---|---|---|---|---|---|")
    for seed, m in rows.items():
        print(
            f"| {seed} | {m['eval_loss']:.4f} | {m['perplexity']:.3f} | {m['exact_match']:.3f} | "
            f"`{m['adapter_sha256'][:16]}` | {m['train_seconds']:.0f} |"
        )
    print(f"lowest exact_match: {min(m['exact_match'] for m in rows.values()):.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("{"):
        from bench.workers import worker_main

        worker_main(_work)
    else:
        main()
