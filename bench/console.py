"""The console at a million revocations: how long an operator waits for each page.

Real pages from the real application (Starlette's in-process client, no
network in between), on PostgreSQL holding a million rows.  Stock Celery has
no such console (Flower lists tasks, not revocations), so there is no ratio.
"""

from __future__ import annotations

import re
import time

from bench.common import MILLION, Figure, fresh_store, log, main, median, seed, task_id

NAME = "console"
TITLE = "Operator console at scale"
ROWS, QUICK_ROWS = MILLION, 5_000
TARGET_SECONDS = 1.0
REPEATS = 5


def run(quick: bool = False) -> list[Figure]:
    from starlette.testclient import TestClient

    from revstore.web import create_app

    rows = QUICK_ROWS if quick else ROWS
    with fresh_store() as store:
        seed(store, rows)
        store.add(["needle-order-4711"], reason="customer cancelled order 4711", terminate=True, expires=1800)
        client = TestClient(create_app(store))
        middle = task_id(rows // 2)
        pages = {
            "find one id (exact)": f"/revocations?q={middle}",
            "find by id prefix": f"/revocations?q={middle[:8]}",
            "search reasons (substring)": "/revocations?q=order+4711",
            "first page, no filter": "/revocations",
            "terminate filter": "/revocations?terminate=yes",
            "expiring within 1 h": "/revocations?expiring=1",
            "overview": "/",
        }
        figures = []
        for label, path in pages.items():
            timings = []
            for _ in range(REPEATS):
                started = time.perf_counter()
                page = client.get(path)
                timings.append(time.perf_counter() - started)
                assert page.status_code == 200, (path, page.status_code)
            if "q=" in path and "4711" in path:
                assert "needle-order-4711" in page.text
            elif "q=" in path:
                assert middle in page.text, path
            took = median(timings)
            log(f"console: {label}: {took * 1000:.0f} ms")
            figures.append(Figure(NAME, f"{label}, {rows:,} rows", took, "s", target=f"≤ {TARGET_SECONDS:.0f} s",
                                  met=took <= TARGET_SECONDS, note=f"median of {REPEATS} page loads"))
        started, url, depth = time.perf_counter(), "/revocations", 0
        while depth < 20:
            found = re.search(r'href="([^"]+)" id="next"', client.get(url).text)
            assert found, "no next page"
            url = found.group(1).replace("&amp;", "&")
            depth += 1
        took = (time.perf_counter() - started) / depth
        figures.append(Figure(NAME, "each of 20 pages paged through", took, "s", target=f"≤ {TARGET_SECONDS:.0f} s",
                              met=took <= TARGET_SECONDS, note="keyset pagination: page 20 costs what page 1 does"))
    return figures


if __name__ == "__main__":
    main(TITLE, run)
