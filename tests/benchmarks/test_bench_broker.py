"""``depotwatch bench broker`` end to end on its own embedded stack, small sizes."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from services.benchmarks.broker import bench_command


@pytest.mark.integration  # starts its own embedded broker and S3
@pytest.mark.slow
def test_bench_broker_reads_each_size_and_the_cleaner_leaves_only_the_unread_batches() -> None:
    result = CliRunner().invoke(
        bench_command, ["--batches", "40", "--read", "10", "--timeout-s", "60"]
    )
    assert result.exit_code == 0, result.output
    # 40 one-record batches, the group committed at 30: batches 0-29 go, 30-39 stay.
    assert re.search(
        r"^\s+40 batches: .*cleaner deleted 30, then from end\s+\d+/s$", result.output, re.M
    )
    assert re.search(r"^\s+40\s+\d+\s+\d+\s+\d+\s+30\s+\d+$", result.output, re.M), result.output


def test_bench_broker_refuses_sizes_not_above_read() -> None:
    result = CliRunner().invoke(bench_command, ["--batches", "10", "--read", "10"])
    assert result.exit_code == 2
    assert "every size must be above --read (10)" in result.output
