"""The house rules that keep the three floors apart: flows -> tasks -> models, never back."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "models": {"prefect", "mlflow", "boto3", "botocore", "dvc", "tasks", "flows", "demo"},
    "tasks": {"flows", "demo"},
    # The demo assets are made with plain torch/transformers code, beside the pipeline.
    "demo": {"prefect", "mlflow", "boto3", "botocore", "dvc", "tasks", "flows"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("floor", sorted(FORBIDDEN))
def test_lower_floors_do_not_import_upper_ones(floor):
    files = sorted((REPO / floor).rglob("*.py"))
    assert files
    offenders = {
        str(f.relative_to(REPO)): sorted(imported_roots(f) & FORBIDDEN[floor]) for f in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_adapter_method_is_one_module_in_the_registry():
    from models.methods import METHODS

    modules = {p.stem for p in (REPO / "models" / "methods").glob("*.py")} - {"__init__", "base"}
    assert modules == set(METHODS)


MAX_MODULE_LINES = 400
SOURCE_DIRS = ("flows", "tasks", "models", "demo", "bench", "tests")


def test_every_module_is_at_most_400_lines():
    """Small modules with one job: past ~400 lines a module is doing two things."""
    files = sorted(p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py"))
    assert len(files) > 50
    too_long = {
        str(f.relative_to(REPO)): n
        for f in files
        if (n := len(f.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert too_long == {}
