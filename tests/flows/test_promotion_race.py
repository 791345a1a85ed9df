"""Racing promotions against a real MLflow tracking server on PostgreSQL (tracking_server in
tests/flows/conftest.py): two processes promote at the same time; one champion, both decisions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import REPO

# A promotion process for the race. Started early (its imports overlap the server's start), it
# says it is ready, waits for the go file (tracking URI, model, racers and its rounds), then runs
# one promotion per round, each decided against the champion it was told it had read before:
# the stale view every racer in a pipeline starts from. A round starts when every racer has
# finished the one before (a barrier, not a clock: a stalled process cannot spill into the next
# round), each racer after its own offset within the round.
RACER = """
import json, os, sys, time
from pathlib import Path
from models.registry.promotion import Gate
from tasks.promotion import promote

me, workdir = sys.argv[1], Path(sys.argv[2])
(workdir / f"ready-{me}").write_text("")
while not (workdir / "go.json").exists():
    time.sleep(0.05)
go = json.loads((workdir / "go.json").read_text())
os.environ["MLFLOW_TRACKING_URI"] = go["uri"]
out = []
for i, r in enumerate(go["rounds"][me]):
    while i and not all((workdir / f"done-{o}-{i - 1}").exists() for o in go["rounds"]):
        time.sleep(0.02)
    time.sleep(r["at"])
    seen = None if r["seen_value"] is None else {"exact_match": r["seen_value"]}
    d = promote.fn(model_name=go["name"], version=r["version"], gate=Gate("exact_match"),
                   challenger={"exact_match": r["value"]}, champion_version=r["seen_version"],
                   champion=seen)
    out.append({"version": r["version"], "promote": d.promote, "reason": d.reason})
    (workdir / f"done-{me}-{i}").write_text("")
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def racers(tmp_path_factory):
    """Two promotion processes, importing while the server starts; (workdir, processes)."""
    workdir = tmp_path_factory.mktemp("racers")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(key, None)
    procs = {
        me: subprocess.Popen(
            [sys.executable, "-c", RACER, me, str(workdir)],
            env=env,
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for me in ("a", "b")
    }
    yield workdir, procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_racing_promotions_leave_one_champion_and_both_decisions(
    racers, tracking_server, monkeypatch
):
    """Two processes promote versions of one model at the same time (MLflow on PostgreSQL).

    Each racer decides against the champion it read before (a stale view), as a pipeline does.
    Round 1: v2 (0.7) and, 0.3 s later, v3 (0.6) against v1 (0.5). Rounds 2 and 3 start for
    both together, once both are done with the round before: v4 (0.9) vs v5 (0.8) against v2,
    v6 (0.95) vs v7 (0.93) against v4. Without a guard the last writer wins whatever its figure;
    with it, each loser is decided again against the winner instead of overwriting it, and the
    best version ends up champion.
    """
    from mlflow import MlflowClient

    workdir, procs = racers
    uri = f"http://127.0.0.1:{tracking_server['port']}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlf = MlflowClient(uri, uri)
    name = f"race-{uuid.uuid4().hex[:6]}"
    experiment = mlf.create_experiment(name)
    mlf.create_registered_model(name)
    scores = {"1": 0.5, "2": 0.7, "3": 0.6, "4": 0.9, "5": 0.8, "6": 0.95, "7": 0.93}
    for version, score in scores.items():
        run_id = mlf.create_run(experiment).info.run_id
        mlf.log_metric(run_id, "adapter_exact_match", score)
        mv = mlf.create_model_version(name, f"runs:/{run_id}/adapter", run_id)
        assert str(mv.version) == version
    mlf.set_registered_model_alias(name, "champion", "1")

    def plan(*rounds):
        return [
            {"version": v, "value": scores[v], "at": at, "seen_version": seen,
             "seen_value": scores[seen]}
            for v, at, seen in rounds
        ]  # fmt: skip

    rounds = {
        "a": plan(("2", 0.0, "1"), ("4", 0.0, "2"), ("7", 0.0, "4")),
        "b": plan(("3", 0.3, "1"), ("5", 0.0, "2"), ("6", 0.0, "4")),
    }
    deadline = time.monotonic() + 240
    while not all((workdir / f"ready-{me}").exists() for me in procs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs.values())
        time.sleep(0.1)
    go = {"uri": uri, "name": name, "rounds": rounds}
    (workdir / "go.tmp").write_text(json.dumps(go))
    (workdir / "go.tmp").rename(workdir / "go.json")  # appears whole
    decided = {}
    for proc in procs.values():
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        decided.update({r["version"]: r for r in json.loads(out.strip().splitlines()[-1])})

    tags = {v: mlf.get_model_version(name, v).tags for v in decided}
    for version, t in tags.items():  # every decision is recorded, with the figure it used
        assert t["promotion.reason"] == decided[version]["reason"]
        assert decided[version]["promote"] is (t["promotion.outcome"] == "promoted")
        assert t["promotion.champion"] == f"{scores[t['promotion.champion_version']]:.6g}"
    # Whoever took the lock first, the pair's decisions are the ones made one after the other:
    # the first against the champion both had read, the second against the first's outcome.
    for better, worse, seen in (("2", "3", "1"), ("4", "5", "2"), ("6", "7", "4")):
        # Both beat the champion they had read, so whichever went first was promoted.
        first, second = (worse, better) if decided[worse]["promote"] else (better, worse)
        assert tags[first]["promotion.champion_version"] == seen
        assert "promotion.note" not in tags[first]
        assert tags[second]["promotion.champion_version"] == first
        assert tags[second]["promotion.note"] == (
            f"champion moved from v{seen} to v{first} while deciding; decided against v{first}"
        )
        assert decided[better]["promote"]  # the better one is champion after its round
        assert tags[worse]["promotion.outcome"] in ("promoted", f"kept champion v{better}")
    assert str(mlf.get_model_version_by_alias(name, "champion").version) == "6"
    assert not mlf.search_registered_models(f"name LIKE '{name}.promotion-lock%'")
