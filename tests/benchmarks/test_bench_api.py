"""`depotwatch bench api`: both servers answer the load, both rows are printed."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from services.benchmarks.api import bench_command


@pytest.mark.slow
def test_bench_api_prints_ours_beside_bare_fastapi() -> None:
    result = CliRunner().invoke(
        bench_command, ["--clients", "4", "--duration", "1", "--warmup", "0.5"]
    )
    assert result.exit_code == 0, result.output
    rows = {
        m.group(1).strip(): float(m.group(2))
        for m in re.finditer(
            r"^(depotwatch api|bare FastAPI, same model)\s+(\d+)", result.output, re.M
        )
    }
    assert set(rows) == {"depotwatch api", "bare FastAPI, same model"}
    assert all(rps > 0 for rps in rows.values())
    assert "errors" not in result.output


def test_bench_api_refuses_no_clients() -> None:
    result = CliRunner().invoke(bench_command, ["--clients", "0"])
    assert result.exit_code == 2
    assert "--clients" in result.output
