"""How the benchmarks turn samples into figures, and figures into the page: no worker, no timing.

A ratio from rounds that took turns is the median of the rounds' ratios with
their spread shown; the hot path's figures keep the ids other pages and the
summary quote; the name-rule series is judged against revstore without
rules, not against stock.
"""

from __future__ import annotations

from collections import Counter

from bench import all as bench_all
from bench import fleet, hotpath, memory, startup
from bench.common import STOCK_REVOKES_MAX, Figure, ratio_text, turns


def test_a_ratio_of_rounds_is_their_median_and_shows_the_spread() -> None:
    figure = Figure("x", "y", 100.0, "tasks/s", 200.0, rounds=[0.97, 1.02, 0.99, 1.01, 0.95])
    assert figure.ratio == 0.99  # not 100 / 200: each round's pair, not one run's revstore over another's stock
    assert figure.cells()[3] == "0.99 (0.95–1.02, 5 rounds)"
    assert ratio_text(1.5, [1.5]) == "1.50"
    assert Figure("x", "y", 1.0, "s", 2.0).ratio == 0.5


def test_rounds_take_turns_so_no_kind_always_goes_first() -> None:
    orders = turns(6, ("stock", "revstore", "names"))
    for kind in ("stock", "revstore", "names"):
        assert Counter(order.index(kind) for order in orders) == {0: 2, 1: 2, 2: 2}
    assert turns(4, ("a", "b")) == [("a", "b"), ("b", "a"), ("a", "b"), ("b", "a")]


def hotpath_samples() -> dict[str, list[hotpath.Sample]]:
    rates = {"stock": [600, 610, 590, 605, 595], "revstore": [597, 608, 585, 606, 590],
             "names": [596, 600, 586, 600, 588]}
    return {kind: [hotpath.Sample(rate, 1_000_000 / rate) for rate in values] for kind, values in rates.items()}


def test_hotpath_judges_name_rules_against_revstore_without_them() -> None:
    checks = {"revstore": hotpath.Check(0.25, 1.0), "names": hotpath.Check(2.5, 500.0)}
    figures = hotpath.figures(hotpath_samples(), 10_000, 1_000_000, checks)
    by_name = {f.name: f for f in figures}
    plain = figures[0]
    assert plain.key == hotpath.KEY and plain.baseline == "revstore off"
    assert plain.rounds is not None and len(plain.rounds) == 5 and plain.met is True
    named = by_name["1,000 name rules stored (one names the task, with a where it fails) vs none"]
    assert named.stock == plain.value and named.baseline == "revstore, no name rules"
    assert named.ratio is not None and round(named.ratio, 3) == round(
        sorted(n / r for n, r in zip([596, 600, 586, 600, 588], [597, 608, 585, 606, 590]))[2], 3)
    # (2.25 µs × 600 tasks/s + 499 µs × 10 ticks/s) of one second of the main process
    assert abs(hotpath.added_share(checks, 600) - (2.25 * 600 + 499 * 10) / 1e6) < 1e-12


def test_the_page_summary_finds_the_hot_path_figures_a_run_writes() -> None:
    checks = {"revstore": hotpath.Check(0.25, 1.0), "names": hotpath.Check(2.5, 500.0)}
    data = bench_all.results(hotpath.figures(hotpath_samples(), 10_000, 1_000_000, checks), {}, 60.0,
                             ("0", "0"), [], [], {"hotpath": 60.0})
    ids = {f["id"] for f in data["figures"]}
    assert {key for key, _ in bench_all.SUMMARY if key.startswith("hotpath-")} <= ids
    assert data["step_minutes"] == {"hotpath": 1.0}
    rows = "\n".join(bench_all.summary(data))
    assert "| 0.99 (0.99–1.00, 5 rounds) |" in rows  # 597/600, 608/610, 585/590, 606/605, 590/595
    assert "(revstore, no name rules)" in rows


def test_the_page_says_why_stock_runs_uncapped() -> None:
    data = {"figures": [], "machine": {}, "load": ["0", "0"], "reused": [], "plots": [], "minutes": 1.0}
    page = bench_all.document(data)
    assert "CELERY_WORKER_REVOKES_MAX=0" in page and f"{STOCK_REVOKES_MAX:,}" in page
    assert "median of the rounds' ratios" in page


def test_startup_and_memory_give_stock_at_the_default_cap_beside_uncapped() -> None:
    size = STOCK_REVOKES_MAX + 10_000
    sample = lambda seconds, rss: startup.Sample(seconds, rss, rss + 5)  # noqa: E731
    samples = {("stock", 0): [sample(1.0, 80), sample(1.1, 81)], ("revstore", 0): [sample(1.1, 90), sample(1.2, 91)],
               ("stock", size): [sample(1.5, 110), sample(1.6, 112)],
               ("revstore", size): [sample(1.3, 100), sample(1.4, 101)],
               (startup.CAPPED, size): [sample(1.4, 100), sample(1.5, 102)]}
    assert startup.kinds_at(size) == ("stock", "revstore", startup.CAPPED)
    assert startup.kinds_at(STOCK_REVOKES_MAX) == ("stock", "revstore")
    figures = {f.name: f for f in startup.figures_from(samples, (0, size))}
    capped = figures[f"{size:,} stored: added start-up, stock at the default cap"]
    assert capped.baseline == f"holds {STOCK_REVOKES_MAX:,}" and capped.rounds is not None
    mem = {f.name: f for f in memory.figures_from(samples, size)}
    assert mem[f"RSS added by {size:,} revocations"].rounds == [10 / 30, 10 / 31]
    assert mem[f"RSS added by {size:,} revocations, stock at the default cap"].stock == 20.5


def test_fleet_shows_the_delivery_part_beside_the_whole() -> None:
    result = fleet.Result("pgbouncer", 500, started=500, server_conns=20, poll=[1.0, 2.0], poll_all=[2.0],
                          broker=[0.3, 0.6], broker_all=[0.6], delivered=[0.1, 0.2], delivery_only=[0.05, 0.08],
                          burst_cpu=[0.4, 0.5, 0.6], bouncer_burst_cpu=[0.1, 0.1, 0.2])
    names = [f.name for f in fleet.figures_for([result])]
    whole = names.index("pgbouncer, N=500: table-only revoke to held, broker wake-up, p99")
    assert names[whole + 1:whole + 5] == [
        "pgbouncer, N=500: broker wake-up, of which delivery (commit to handler), p50",
        "pgbouncer, N=500: broker wake-up, of which delivery (commit to handler), p99",
        "pgbouncer, N=500: database CPU per broker wake-up (all 500 pull)",
        "pgbouncer, N=500: broker delivery alone (broadcast to handler, no pulls), p99",
    ]
