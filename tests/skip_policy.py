"""Which skips a test run may show. Under CI=true a skip for any reason not in ALLOWED fails.

Several modules skip themselves where a service is missing (PostgreSQL for the team stack,
the nightly, the fault and promotion-race tests). On a developer's machine that is a skip with
its reason (`make test` prints them, `-rs`); on CI it would be a green run with a higher skip
count, and what those tests claim would be untested without anyone seeing it. So under CI=true
every skip whose reason is not below becomes a failure of that test, naming the test and the
reason. Allowed are only the skips no CPU machine can avoid: CUDA, GPUs, and the `gpu` extra.

A pytest plugin (tests/conftest.py loads it), so that tests/test_skip_policy.py can run it on
its own in a pytest subprocess.
"""

from __future__ import annotations

import os

import pytest

# Exact reasons, as the tests spell them.
ALLOWED = frozenset(
    {
        "needs CUDA",  # tests/models/training/test_qlora_fsdp.py
        "needs 2 GPUs (one per rank)",  # tests/models/training/test_qlora_fsdp.py
        # test_qlora_fsdp.py again, checked only after "needs CUDA": a CUDA machine's QLoRA
        # dependency, which no CPU machine installs
        "needs bitsandbytes",
        "needs liger-kernel (the gpu extra)",  # tests/models/training/test_kernels.py
        # test_kernels.py: the refusal without liger cannot be seen where the gpu extra is in
        "liger-kernel is installed here",
    }
)


def under_ci() -> bool:
    """CI=true (or any value but empty, 0 and false), as CI services set it."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def skip_reason(report) -> str:
    """The reason a skipped report gives (pytest keeps it as (path, line, 'Skipped: ...'))."""
    longrepr = report.longrepr
    message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return message.removeprefix("Skipped: ")


def refusal(nodeid: str, reason: str) -> str | None:
    """The failure message for a skip of `nodeid` for `reason` under CI, None where allowed."""
    if reason in ALLOWED:
        return None
    return (
        f"{nodeid} skipped under CI=true: {reason} "
        "(only GPU-only skips are allowed on CI; provide what the reason names)"
    )


def _refuse(report, nodeid: str) -> None:
    if not (under_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    message = refusal(nodeid, skip_reason(report))
    if message is not None:
        report.outcome = "failed"
        report.longrepr = message


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _refuse(report, item.nodeid)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    # A module that skips itself whole (pytest.skip(allow_module_level=True), importorskip)
    report = yield
    _refuse(report, collector.nodeid)
    return report
