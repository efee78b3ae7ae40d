"""The figures a reader would rather see than read: SVGs for ``docs/benchmarks.md``.

Drawn from the raw samples of the same run (start-up, memory, propagation,
fleet), with matplotlib: a benchmark-only dependency (``pip install
'revstore[bench]'``; ``make bench`` installs it).  The SVGs are written
without dates or random ids, so a re-run changes them only where the
figures changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import median, percentile

#: (file name, caption) of each plot drawn
Plot = tuple[str, str]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("bench: the plots need matplotlib: pip install -e '.[bench]' (make bench does)") from None
    matplotlib.use("Agg")
    matplotlib.rcParams.update({"svg.hashsalt": "revstore", "svg.fonttype": "none", "font.size": 9})
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path, name: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out / name, format="svg", metadata={"Date": None})
    fig.clf()
    return name


def startup_and_memory(samples: dict[tuple[str, int], list[Any]], out: Path) -> list[Plot]:
    """Start-up time and RSS added against the stored count, stock vs revstore."""
    plt = _pyplot()
    sizes = sorted({size for _, size in samples})
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for kind, label, style in (("stock", "stock Celery (--statedb)", "o--"), ("revstore", "revstore", "s-")):
        have = [s for s in sizes if (kind, s) in samples]
        secs = [median([x.seconds for x in samples[(kind, s)]]) for s in have]
        empty = min(x.rss_mib for x in samples[(kind, 0)]) if (kind, 0) in samples else 0.0
        rss = [min(x.rss_mib for x in samples[(kind, s)]) - empty for s in have]
        left.plot([s / 1000 for s in have], secs, style, label=label)
        right.plot([s / 1000 for s in have], rss, style, label=label)
    left.set(xlabel="stored revocations (thousands)", ylabel="spawn to first task (s)", title="Start-up")
    right.set(xlabel="stored revocations (thousands)", ylabel="main process RSS added (MiB)", title="Memory")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_ylim(bottom=0)
    return [(_save(fig, out, "startup-memory.svg"),
             "Start-up time (median of the runs) and resident memory added, against the stored count")]


def _ecdf(ax: Any, values: Sequence[float], label: str, scale: float = 1.0) -> None:
    ordered = sorted(v * scale for v in values if v != float("inf"))
    if ordered:
        ax.step(ordered, [(i + 1) / len(values) for i in range(len(ordered))], where="post", label=label)


def propagation(latencies: dict[str, list[float]], fleet: Sequence[Any], out: Path) -> list[Plot]:
    """Distributions of commit-to-held: 4 real workers (listening on/off), and the fleet's."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for mode, values in latencies.items():
        _ecdf(left, values, f"listening {mode}", 1000)
    left.set(xscale="log", xlabel="commit to held by a worker (ms, log)", ylabel="fraction of (probe, worker)",
             title="4 real workers")
    for r in fleet:
        for label, values in (("polling", r.poll), ("broker wake-up", r.broker)):
            if values:
                _ecdf(right, values, f"{r.mode}, N={r.n}, {label}")
    right.set(xlabel="commit to held by a worker (s)", title="Simulated fleet, table-only revoke")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return [(_save(fig, out, "propagation.svg"), "Propagation of a table-only revocation: cumulative distributions")]


def fleet(results: Sequence[Any], out: Path) -> list[Plot]:
    """Server connections and propagation p50/p99 against N, direct vs PgBouncer."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for mode, style in (("direct", "o--"), ("pgbouncer", "s-")):
        runs = sorted((r for r in results if r.mode == mode), key=lambda r: r.n)
        if not runs:
            continue
        ns = [r.n for r in runs]
        left.plot(ns, [r.server_conns for r in runs], style, label=f"{mode}: server connections")
        left.plot(ns, [r.started for r in runs], style, alpha=0.4, label=f"{mode}: workers connected")
        for label, attr in (("polling", "poll"), ("broker wake-up", "broker")):
            live = [r for r in runs if getattr(r, attr)]
            for pct in (50, 99):
                right.plot([r.n for r in live], [percentile(getattr(r, attr), pct) for r in live], style,
                           alpha=1.0 if pct == 99 else 0.5, label=f"{mode}, {label}, p{pct}")
    left.axhline(100, color="grey", lw=0.8, ls=":")
    left.text(left.get_xlim()[0], 102, "max_connections", fontsize=7, color="grey")
    left.set(xlabel="workers (N)", ylabel="count", title="PostgreSQL connections")
    right.set(xlabel="workers (N)", ylabel="commit to held (s)", yscale="log", title="Table-only revoke to held")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return [(_save(fig, out, "fleet.svg"), "Fleet: connections and propagation against the number of workers")]


def draw(data: dict[str, Any], out: Path) -> list[Plot]:
    """Every plot the run has data for."""
    plots: list[Plot] = []
    if data.get("startup"):
        plots += startup_and_memory(data["startup"], out)
    if data.get("propagation") or data.get("fleet"):
        plots += propagation(data.get("propagation", {}), data.get("fleet", []), out)
    if data.get("fleet"):
        plots += fleet(data["fleet"], out)
    return plots
