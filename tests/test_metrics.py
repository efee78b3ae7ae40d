"""Issue 27: the console's /metrics against three real workers and PostgreSQL.

The scrape is parsed with prometheus_client's own parser; one worker listens
through a proxy that is then taken down, and its ``listener_live`` and lag
must change while the two others stay caught up.  Every metric that the
example alert rules and the Grafana dashboard in docs/ name must be exported.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from harness import PG_BASE, wait_for
from console_server import ConsoleServer
from revstore.web import metrics

DOCS = Path(__file__).resolve().parent.parent / "docs"
#: The example files whose metric names must all exist.
EXAMPLES = ("prometheus-alerts.yml", "grafana-dashboard.json")


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of one scrape: name -> {sorted labels: value}."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def per_worker(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str) -> dict[str, float]:
    return {dict(labels)["worker"]: value for labels, value in samples.get(name, {}).items()}


def test_metrics_show_each_workers_lag_and_a_lost_listener(cluster_factory, celery_app, pg_proxy, monkeypatch) -> None:
    monkeypatch.setattr(metrics, "WORKERS_SECONDS", 0.3)  # each scrape asks again: the test waits less
    # an explicit interval: a worker whose listener is gone polls only every 30 s, so its lag shows
    cluster = cluster_factory("postgresql", revstore_sync_interval=30)
    workers = [cluster.worker("a"), cluster.worker("b"),
               cluster.worker("c", REVSTORE_LISTEN_URL=pg_proxy.url(PG_BASE))]
    for w in workers:
        w.start(wait=False)
    for w in workers:
        w.wait_ready()
    a, b, c = (w.nodename for w in workers)
    store = cluster.store
    store.add(["soon-1"], expires=600)
    console = ConsoleServer(store, celery_app=celery_app.app)
    try:
        def all_listening() -> dict | None:
            samples = scrape(console.url)
            live = per_worker(samples, "revstore_worker_listener_live")
            return samples if live == {a: 1.0, b: 1.0, c: 1.0} else None

        samples = wait_for(all_listening, 20, interval=0.3, what="three workers listening")
        assert samples["revstore_database_up"][()] == 1.0
        assert samples["revstore_workers_replying"][()] == 3.0
        assert samples["revstore_table_revocations"][(("kind", "task"),)] == 1.0
        assert 0 < samples["revstore_table_next_expiry_seconds"][()] <= 600
        version = samples["revstore_table_version"][()]
        assert set(per_worker(samples, "revstore_worker_lag_versions")) == {a, b, c}
        assert all(per_worker(samples, name) for name in ("revstore_worker_revocations", "revstore_worker_polls_total",
                                                          "revstore_worker_snapshot_age_seconds"))
        # the API's fleet is the same judgement (console on loopback: reads are open)
        fleet = httpx.get(f"{console.url}/api/fleet", timeout=10).json()
        assert fleet["version"] == version and {w["node"] for w in fleet["workers"]} == {a, b, c}
        assert all(w["lag"] == 0 and w["listener_live"] for w in fleet["workers"])

        # a revoke broadcast: each worker writes it through, and the counters say so
        celery_app.app.control.revoke("metrics-1")
        wait_for(lambda: all(v >= 1 for v in per_worker(scrape(console.url), "revstore_worker_commits_total").values())
                 and len(per_worker(scrape(console.url), "revstore_worker_commits_total")) == 3, 15,
                 interval=0.3, what="every worker to count its write-through commit")

        pg_proxy.down()  # c's LISTEN connection is cut and cannot come back
        wait_for(lambda: per_worker(scrape(console.url), "revstore_worker_listener_live").get(c) == 0.0, 20,
                 interval=0.3, what="c's listener to show as down")
        store.add(["after-cut"])  # a and b hear it at once; c only at its next poll, 30 s away

        def lagging() -> dict | None:
            samples = scrape(console.url)
            lag = per_worker(samples, "revstore_worker_lag_versions")
            return samples if lag.get(a) == 0.0 and lag.get(b) == 0.0 and lag.get(c, 0) >= 1 else None

        samples = wait_for(lagging, 15, interval=0.3, what="a and b caught up, c behind")
        assert samples["revstore_table_version"][()] > version
        live = per_worker(samples, "revstore_worker_listener_live")
        assert live == {a: 1.0, b: 1.0, c: 0.0}
        lag_seconds = per_worker(samples, "revstore_worker_lag_seconds")
        assert lag_seconds[a] == 0.0 and lag_seconds[c] > 0
        assert per_worker(samples, "revstore_worker_healthy")[a] == 1.0

        exported = set(samples)
        for example in EXAMPLES:
            text = (DOCS / example).read_text()
            named = set(re.findall(r"\brevstore_[a-z_]+\b", text)) - {"revstore_status"}
            assert named, example
            assert named <= exported, f"{example} names metrics that are not exported: {sorted(named - exported)}"
    finally:
        console.close()


def test_metrics_without_the_database_still_answer(pg_store, pg_proxy, monkeypatch) -> None:
    """The table unreachable: the scrape still parses and says so, in one line of log, with no traceback."""
    from revstore.store import RevocationStore

    through = RevocationStore(pg_proxy.url(PG_BASE), schema=pg_store.tables.schema)
    console = ConsoleServer(through)
    try:
        assert scrape(console.url)["revstore_database_up"][()] == 1.0
        pg_proxy.down()
        through.dispose()
        monkeypatch.setattr(metrics, "WORKERS_SECONDS", 0.0)
        samples = scrape(console.url)
        assert samples["revstore_database_up"][()] == 0.0
        assert "revstore_table_version" not in samples
    finally:
        console.close()
        through.dispose()


def test_a_scrape_never_waits_for_the_counts_that_scan_the_table(sqlite_url, monkeypatch) -> None:
    """The counts are refreshed in the background: a scrape serves the last ones, then sees the new."""
    from prometheus_client.parser import text_string_to_metric_families as parse

    from revstore import migrate
    from revstore.store import RevocationStore

    store = RevocationStore(sqlite_url)
    migrate.upgrade(store)
    store.add(["a", "b"])
    monkeypatch.setattr(metrics, "WORKERS_SECONDS", 0.0)
    monkeypatch.setattr(metrics, "COUNTS_SECONDS", 0.0)
    registry = metrics.metrics_registry(store)

    def live_tasks() -> float:
        for family in parse(metrics.exposition(registry).decode()):
            for sample in family.samples:
                if sample.name == "revstore_table_revocations" and sample.labels.get("kind") == "task":
                    return sample.value
        raise AssertionError("no revstore_table_revocations{kind=task} sample")

    assert live_tasks() == 2  # the first scrape counts, once
    counted = []
    real = store.stats
    monkeypatch.setattr(store, "stats", lambda: counted.append(threading.current_thread().name) or real())
    store.add(["c"])
    wait_for(lambda: live_tasks() == 3, 10, what="the background count to show the new row")
    assert counted and "MainThread" not in counted, counted  # never counted on the scrape's thread
    store.dispose()
