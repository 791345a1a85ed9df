from pathlib import Path

from models.config.reference import render, sections
from models.config.run import LoraflowConfig

REPO = Path(__file__).resolve().parents[3]


def test_committed_page_is_the_rendering():
    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert page == render(), "docs/configuration.md is stale: run `make docs` and commit it"


def test_every_key_has_a_row_with_its_description():
    page = render()
    keys = [("", name, f) for name, f in LoraflowConfig.model_fields.items()]
    keys += [
        (f"{s}.", name, f) for s, model in sections() for name, f in model.model_fields.items()
    ]
    sections_seen = {s for s, _ in sections()}
    assert sections_seen == {
        "data", "adapter", "training", "evaluation", "evaluation.lm_eval", "registry", "export"
    }  # fmt: skip
    for prefix, name, field in keys:
        if f"{prefix}{name}" in sections_seen:
            continue
        row = next(line for line in page.splitlines() if line.startswith(f"| `{prefix}{name}` |"))
        assert field.description and row.endswith(
            f"{field.description.replace('|', chr(92) + '|')} |"
        )


def test_rows_show_types_defaults_and_bounds():
    rows = {
        line.split(" | ")[0][3:-1]: line.split(" | ")
        for line in render().splitlines()
        if line.startswith("| `")
    }
    assert rows["base_model"][1:3] == ["str", "(required)"]
    assert rows["adapter.r"][1:4] == ["int", "`8`", ">= 1"]
    assert rows["adapter.dropout"][1:4] == ["float", "`0.05`", "in [0, 1)"]
    assert rows["adapter.target_modules"][1:3] == [
        "list of str or `all-linear`",
        "`[q_proj, v_proj]`",
    ]
    assert rows["training.learning_rate"][2:4] == ["`0.002`", "> 0"]
    assert rows["training.cpu_threads"][1:4] == ["int or empty", "empty", ">= 1"]
    assert rows["training.lr_scheduler"][1] == "one of `linear`, `cosine`, `constant`"
    assert rows["evaluation.metrics"][1:3] == ["list of str", "`[exact_match]`"]
    assert rows["export.sse"][1] == "one of `AES256`, `aws:kms` or empty"
