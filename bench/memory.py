"""Memory: worker RSS added per million revocations, revstore vs stock.

Real workers, the same starts as the start-up benchmark: the main process's
resident memory once it ran its first task, with a million revocations
loaded minus with none.  Stock holds the same ids in its ``LimitedSet``
loaded from ``--statedb``; revstore in the very same ``LimitedSet`` type,
loaded from PostgreSQL.  The peak (``VmHWM``) shows what the load needed on
the way.  Both include the id strings (about 85 bytes each).
"""

from __future__ import annotations

from bench import startup
from bench.common import MILLION, Figure, Run, fresh_store, main

NAME = "memory"
TITLE = "Memory: worker RSS per million revocations"
QUICK_SIZE = 5_000
#: issue 26: revstore's worker holds a million revocations in at most this share of stock's memory
TARGET_RATIO = 0.70

Samples = dict[tuple[str, int], list[startup.Sample]]


def figures_from(samples: Samples, size: int) -> list[Figure]:
    """Added RSS and peak of revstore vs stock at ``size``, from start-up samples."""
    def added(kind: str, attr: str) -> float:
        loaded = min(getattr(s, attr) for s in samples[(kind, size)])
        empty = min(getattr(s, attr) for s in samples[(kind, 0)])
        return loaded - empty

    rev, stock = added("revstore", "rss_mib"), added("stock", "rss_mib")
    per_id = lambda mib: mib * 1024 * 1024 / size  # noqa: E731
    return [
        Figure(NAME, f"RSS added by {size:,} revocations", rev, "MiB", stock,
               target=f"≤ {TARGET_RATIO:.2f} × stock", met=rev <= TARGET_RATIO * stock,
               note=f"{per_id(rev):,.0f} vs {per_id(stock):,.0f} bytes per id, id string included"),
        Figure(NAME, f"peak RSS added while loading {size:,}", added("revstore", "peak_mib"), "MiB",
               added("stock", "peak_mib")),
    ]


def run(quick: bool = False, samples: Samples | None = None) -> list[Figure]:
    """``samples`` from a start-up run (bench.all) saves starting the same workers again."""
    size = QUICK_SIZE if quick else MILLION
    if samples is None or (("revstore", size) not in samples):
        with Run(NAME) as bench_run, fresh_store() as store:
            samples = startup.measure(bench_run, store, (0, size), 1)
    return figures_from(samples, size)


if __name__ == "__main__":
    main(TITLE, run)
