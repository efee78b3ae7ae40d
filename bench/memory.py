"""Memory: worker RSS added per million revocations, revstore vs stock.

Real workers, the same starts as the start-up benchmark: the main process's
resident memory once it ran its first task, with a million revocations
loaded minus with none.  Stock holds the same ids in its ``LimitedSet``
loaded from ``--statedb``; revstore in the very same ``LimitedSet`` type,
loaded from PostgreSQL.  The peak (``VmHWM``) shows what the load needed on
the way.  Both include the id strings (about 85 bytes each).

Stock's cap on the revoked set is lifted, so it holds the million as
revstore does; stock at the default cap (``startup.CAPPED``), holding only
the newest 50,000 of them, is given beside it.  A ratio is the median of
the repeats' ratios (the start-up benchmark's repeats take turns), with
their min and max.
"""

from __future__ import annotations

from bench import startup
from bench.common import MILLION, STOCK_REVOKES_MAX, Figure, Run, fresh_store, main, median

NAME = "memory"
TITLE = "Memory: worker RSS per million revocations"
QUICK_SIZE = 60_000

Samples = dict[tuple[str, int], list[startup.Sample]]


def figures_from(samples: Samples, size: int) -> list[Figure]:
    """Added RSS and peak of revstore vs stock at ``size``, from start-up samples."""
    def added(kind: str, attr: str) -> list[float]:
        """Each repeat's memory at ``size`` less the same repeat's with nothing loaded (stock's: the cap is moot)."""
        empty = samples[("stock" if kind == startup.CAPPED else kind, 0)]
        return [getattr(s, attr) - getattr(e, attr) for s, e in zip(samples[(kind, size)], empty)]

    def paired(kind: str, base: str, attr: str) -> list[float] | None:
        values, stock = added(kind, attr), added(base, attr)
        return [v / s for v, s in zip(values, stock)] if all(s > 0 for s in stock) else None

    rev, stock = median(added("revstore", "rss_mib")), median(added("stock", "rss_mib"))
    per_id = lambda mib: mib * 1024 * 1024 / size  # noqa: E731
    figures = [
        Figure(NAME, f"RSS added by {size:,} revocations", rev, "MiB", stock, target="≤ stock", met=rev <= stock,
               rounds=paired("revstore", "stock", "rss_mib"),
               note=f"{per_id(rev):,.0f} vs {per_id(stock):,.0f} bytes per id, id string included"),
        Figure(NAME, f"peak RSS added while loading {size:,}", median(added("revstore", "peak_mib")), "MiB",
               median(added("stock", "peak_mib")), rounds=paired("revstore", "stock", "peak_mib")),
    ]
    if (startup.CAPPED, size) in samples:
        capped = median(added(startup.CAPPED, "rss_mib"))
        figures.append(Figure(
            NAME, f"RSS added by {size:,} revocations, stock at the default cap", rev, "MiB", capped,
            rounds=paired("revstore", startup.CAPPED, "rss_mib"), baseline=f"holds {STOCK_REVOKES_MAX:,}",
            note=f"stock as it ships keeps the newest {STOCK_REVOKES_MAX:,} of the {size:,} it reads; "
                 "revstore holds them all"))
    return figures


def run(quick: bool = False, samples: Samples | None = None) -> list[Figure]:
    """``samples`` from a start-up run (bench.all) saves starting the same workers again."""
    size = QUICK_SIZE if quick else MILLION
    if samples is None or (("revstore", size) not in samples):
        with Run(NAME) as bench_run, fresh_store() as store:
            samples = startup.measure(bench_run, store, (0, size), 1)
    return figures_from(samples, size)


if __name__ == "__main__":
    main(TITLE, run)
