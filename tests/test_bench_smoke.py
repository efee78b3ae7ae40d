"""The benchmark scripts run (tiny sizes): figures are measured, not asserted.

One real run of ``python -m bench.startup --quick`` proves the shared
machinery works end to end: a fresh schema, seeding, a stock ``--statedb``
file, real stock and revstore workers, and the printed table.  No timing is
asserted: a benchmark is not a test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_startup_benchmark_prints_every_figure_with_its_stock_ratio(redis_ready, pg_admin_engine) -> None:
    done = subprocess.run([sys.executable, "-m", "bench.startup", "--quick"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^\| ([^|]+?) \| ([\d.,-]+) s \| (?:([\d.,-]+) s|—) \| ([\d.-]*) \|", done.stdout, re.MULTILINE)}
    for size in ("0", "500", "5,000"):
        value, stock, ratio = rows[f"{size} stored: spawn to first task"]
        assert float(value) > 0 and float(stock) > 0 and float(ratio) > 0
    assert "5,000 stored: added start-up" in rows
