"""tests/skip_policy.py: under CI=true only GPU-only skips pass; any other skip (a missing
service, a missing module) fails, naming the test and the reason. Run for real: a pytest
subprocess with the plugin on a few throwaway tests."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO
from tests.skip_policy import ALLOWED

THROWAWAY = """
import pytest

@pytest.fixture(scope="module")
def database():
    pytest.skip("no PostgreSQL at 127.0.0.1:5432 (connection refused)")

@pytest.mark.skipif(True, reason="needs CUDA")
def test_on_a_gpu():
    pass

def test_with_the_gpu_extra():
    pytest.skip("needs liger-kernel (the gpu extra)")

def test_on_the_team_stack(database):
    pass

def test_that_runs():
    assert True
"""


def run_pytest(tmp_path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_throwaway.py").write_text(THROWAWAY)
    (tmp_path / "test_needs_module.py").write_text(
        'import pytest\n\npytest.importorskip("no_such_module_anywhere")\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "CI"}
    env["PYTHONPATH"] = str(REPO)  # tests.skip_policy; the run itself is in tmp_path
    if ci is not None:
        env["CI"] = ci
    # --continue-on-collection-errors: the refused module skip (a collection error) would
    # otherwise stop the run before the other tests show theirs
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.skip_policy", "-p", "no:cacheprovider",
         "-q", "-rfEs", "--continue-on-collection-errors", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_under_ci_only_gpu_skips_pass_and_others_fail_naming_test_and_reason(tmp_path):
    proc = run_pytest(tmp_path, ci="true")
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "1 passed, 2 skipped, 2 errors" in out, out
    assert "SKIPPED [1] test_throwaway.py:8: needs CUDA" in out, out
    assert "SKIPPED [1] test_throwaway.py:13: needs liger-kernel (the gpu extra)" in out, out
    assert (
        "test_throwaway.py::test_on_the_team_stack skipped under CI=true: "
        "no PostgreSQL at 127.0.0.1:5432 (connection refused)"
    ) in out, out
    assert (
        "test_needs_module.py skipped under CI=true: could not import 'no_such_module_anywhere'"
    ) in out, out


def test_elsewhere_every_skip_is_a_skip_with_its_reason_shown(tmp_path):
    proc = run_pytest(tmp_path, ci=None)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "1 passed, 4 skipped" in out, out
    assert "no PostgreSQL at 127.0.0.1:5432 (connection refused)" in out, out
    assert "could not import 'no_such_module_anywhere'" in out, out


def test_the_allowed_reasons_are_the_gpu_ones_the_suite_uses():
    """Each allowed reason is spelled so somewhere in tests/ (a reworded skip would otherwise
    fail CI on a GPU machine, or an old entry would allow something else), and each is about
    CUDA, GPUs or the gpu extra's packages."""
    sources = "\n".join(p.read_text() for p in (REPO / "tests").rglob("test_*.py"))
    for reason in ALLOWED:
        assert f'"{reason}"' in sources, reason
        assert any(w in reason for w in ("CUDA", "GPU", "gpu extra", "liger", "bitsandbytes"))
