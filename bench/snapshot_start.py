"""Restart from the local snapshot vs from the table, a million revocations stored.

A worker keeps a snapshot of what it synced in ``revstore_state_dir``; when
it restarts under the same node name it loads that file and pulls only the
changes since the snapshot's marker, instead of the packed PostgreSQL load
of every row.  Both kinds of start alternate in the same run, with the same
table: one priming start writes the snapshot, then ``CHANGES`` more
revocations are written, which each local start pulls as its catch-up.  The
figure is spawn to first task, as in the start-up benchmark.
"""

from __future__ import annotations

from bench.common import MILLION, Figure, Run, fresh_store, log, main, median, ratio_text, seed, turns, wait_for
from bench.startup import FROM_TABLE, REPEATS, start_once

NAME = "snapshot_start"
TITLE = "Restart: local snapshot + changes vs the table"
SIZE, QUICK_SIZE = MILLION, 5_000
CHANGES = 1_000


def run(quick: bool = False) -> list[Figure]:
    size = QUICK_SIZE if quick else SIZE
    samples: dict[str, list[float]] = {"table": [], "local": []}
    with Run(NAME) as bench_run, fresh_store() as store:
        seed(store, size)
        state = bench_run.logdir / "state"
        local = {"REVSTORE_STATE_DIR": str(state)}
        primer = bench_run.worker("local", store=store, env=local).start()
        wait_for(lambda: list(state.glob("*.snapshot")), 600, "the priming start's snapshot", primer)
        primer.stop()
        store.add([f"later-{i}" for i in range(CHANGES)])
        envs = {"table": FROM_TABLE, "local": local}
        for order in turns(1 if quick else REPEATS, tuple(envs)):  # take turns: both see the same machine load
            for kind in order:
                seconds = start_once(bench_run, kind, store=store, env=envs[kind]).seconds
                samples[kind].append(seconds)
                log(f"restart from {kind}, {size:,} stored: {seconds:.2f}s")
    table, snap = median(samples["table"]), median(samples["local"])
    rounds = [s / t for s, t in zip(samples["local"], samples["table"])]
    return [
        Figure(NAME, f"{size:,} stored, restart loading from the table", table, "s"),
        Figure(NAME, f"{size:,} stored, restart from the local snapshot + {CHANGES:,} changes", snap, "s",
               note=f"{ratio_text(median(rounds), rounds)} × the restart from the table, as the median of the "
                    "rounds' ratios (the two took turns); used for every start that finds a fresh snapshot"),
    ]


if __name__ == "__main__":
    main(TITLE, run)
