"""The README and docs/ cannot rot quietly: every relative link and #anchor resolves (GitHub's
heading slugs), every picture they show is in the tree, and every `loraflow` subcommand and
`make` target the README names exists. Pure file reads, plus the real argparse parser."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from flows.cli import parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the text may hold inline code, the target no spaces.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^()\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"")
HTML_ID = re.compile(r"<[^>]+\b(?:id|name)=\"([^\"]+)\"")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The page's lines outside fenced code blocks (a `# comment` there is no heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def code_texts(text: str) -> list[str]:
    """What the page shows as code: fenced blocks' lines and inline code spans."""
    texts, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            texts.append(line)
        else:
            texts += [m.group(2) for m in INLINE_CODE.finditer(line)]
    return texts


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (a link's text, no tags), lower case,
    every character but letters, digits, spaces, '-' and '_' (code marks too) removed, spaces
    to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).lower()
    kept = "".join(
        c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN" or c.isdigit()
    )
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor on the page; a repeated heading gets -1, -2, ... as on GitHub."""
    found, seen = set(), {}
    for line in prose_lines(page.read_text(encoding="utf-8")):
        found |= set(HTML_ID.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path) -> list[str]:
    """The page's link and image targets, outside code."""
    targets = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        line = INLINE_CODE.sub("", line)
        targets += LINK.findall(line) + HTML_SRC.findall(line)
    return targets


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    return broken


def test_slug_follows_githubs_rules():
    assert slug("On a GPU: `make gpu-check`") == "on-a-gpu-make-gpu-check"
    assert slug("Robust, not lucky: the demo for adapter seeds 0-4") == (
        "robust-not-lucky-the-demo-for-adapter-seeds-0-4"
    )
    assert slug("Row 14: the real model (SmolLM2-135M-Instruct, chat data)") == (
        "row-14-the-real-model-smollm2-135m-instruct-chat-data"
    )
    assert slug("Sharded training (FSDP) and several machines") == (
        "sharded-training-fsdp-and-several-machines"
    )
    assert slug("Bases on S3, and an export as the next run's base") == (
        "bases-on-s3-and-an-export-as-the-next-runs-base"
    )


def test_the_checker_sees_a_broken_link_and_a_broken_anchor(tmp_path):
    (tmp_path / "a.md").write_text(
        "# A page\n\n## Twice\n\n## Twice\n\n```\n# not a heading\n```\n"
    )
    page = tmp_path / "b.md"
    page.write_text(
        "[ok](a.md#a-page) [dup](a.md#twice-1) [self](#b) `[code](nowhere.md)`\n"
        "[gone](missing.md) [bad anchor](a.md#not-a-heading) ![pic](images/none.png)\n"
        "[web](https://example.com/x.md#y)\n\n# B\n"
    )
    assert broken_links(page) == [
        "missing.md (no such file)",
        "a.md#not-a-heading (no heading #not-a-heading in a.md)",
        "images/none.png (no such file)",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


def test_the_readme_shows_the_pictures_made_by_make_screenshots():
    shown = {t for t in links(REPO / "README.md") if t.startswith("docs/images/")}
    assert shown >= {"docs/images/prefect-flow-run.png", "docs/images/mlflow-model-version.png"}
    for image in shown:
        assert (REPO / image).stat().st_size < 300_000, f"{image}: keep pictures small for git"


README_CODE = code_texts((REPO / "README.md").read_text(encoding="utf-8"))
SUBCOMMANDS = sorted(
    {
        m.group(1)
        for text in README_CODE
        for m in re.finditer(r"(?:^|[\s/`(])loraflow\s+([a-z][a-z0-9-]*)", text)
    }
)
MAKE_TARGETS = sorted(
    {m.group(1) for text in README_CODE for m in re.finditer(r"(?:^|\s)make\s+([\w-]+)", text)}
)


def makefile_targets() -> set[str]:
    targets = set()
    for line in (REPO / "Makefile").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([\w./-]+(?:\s+[\w./-]+)*)\s*:(?![:=])", line)
        if match:
            targets |= set(match.group(1).split())
    return targets


def test_the_readme_names_commands():
    """The lists below are read from the README; an empty one would make its test vacuous."""
    assert {"run", "check", "plan", "compare", "export", "reproduce", "promote"} <= set(SUBCOMMANDS)
    assert {"run", "test", "screenshots"} <= set(MAKE_TARGETS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_loraflow_subcommand_the_readme_names_exists(name, capsys):
    with pytest.raises(SystemExit) as exited:
        parser().parse_args([name, "--help"])
    assert exited.value.code == 0, f"`loraflow {name}`: {capsys.readouterr().err.strip()}"


@pytest.mark.parametrize("target", MAKE_TARGETS)
def test_every_make_target_the_readme_names_exists(target):
    assert target in makefile_targets(), f"the README names `make {target}`; the Makefile has none"
