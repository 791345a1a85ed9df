"""The benchmark suite's command line (the benchmarks themselves are not tests: `make bench`)."""

import pytest

from bench.__main__ import BENCHMARKS, parse_args, table
from bench.common import Figure


def test_parse_args_selects_benchmarks():
    assert parse_args([]).only == list(BENCHMARKS)
    args = parse_args(["--only", "memory,flops", "--json"])
    assert args.only == ["memory", "flops"] and args.json
    with pytest.raises(SystemExit):
        parse_args(["--only", "nope"])


def test_table_has_one_row_per_figure():
    rows = table([Figure(3, "memory", "1.2x", "report", "python -m bench --only memory")])
    assert rows.splitlines()[2] == (
        "| 3 | memory | 1.2x | report | `python -m bench --only memory` |"
    )
