"""Issue 18: never weaker than stock Celery on odd control messages.

Each message goes to stock Celery's own handler in a fresh worker state, then
to revstore's wrapped handler in a fresh worker state with a real store and
sync thread.  revstore's memory must hold everything stock's does, the table
every key that can be stored, and the reply must name what was not stored.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.utils.timer2 import Timer
from celery.worker import control as celery_control
from celery.worker import state as worker_state

from harness import discarded, revoked_on, send, wait_for
from revstore import control
from revstore.config import load_settings
from revstore.errors import InvalidInput
from revstore.memory import WorkerMemory
from revstore.records import as_target
from revstore.store import RevocationStore, Target
from revstore.sync import RevocationSync

LONG = "L" * 300

ODD: list[tuple[str, dict[str, Any]]] = [
    ("revoke", {"task_id": LONG}),
    ("revoke", {"task_id": ["ok-1", "y" * 1000, "ok-2"]}),
    ("revoke", {"task_id": "sig-nosuch", "terminate": True, "signal": "NOSUCH"}),
    ("revoke", {"task_id": "sig-lower", "terminate": True, "signal": "term"}),
    ("revoke", {"task_id": "sig-number", "terminate": True, "signal": 12345}),
    ("revoke", {"task_id": [123, None, "", "ok-3", "ok-3", "nul\x00byte", "\udcff-surrogate", 4.5, True]}),
    ("revoke", {"task_id": {"a": 1}}),
    ("revoke", {"task_id": [{"a": 1}, "ok-4", ["nested"]]}),
    ("revoke", {"task_id": None}),
    ("revoke", {"task_id": ""}),
    ("revoke", {"task_id": "ok-5", "garbage": object(), "revstore_expires": "soon"}),
    ("revoke", {"task_id": "ok-6", "revstore_durable": "yes"}),
    ("revoke", {"task_id": [f"huge-{i}" for i in range(5000)] + [LONG + "-in-huge"]}),
    ("terminate", {"signal": "NOSUCH", "task_id": "term-nosuch"}),
    ("terminate", {"signal": "SIGKILL", "task_id": ["term-ok", "z" * 400]}),
    ("revoke_by_stamped_headers", {"headers": ["a=b=c"]}),
    ("revoke_by_stamped_headers", {"headers": ["dup=1", "dup=2"]}),
    ("revoke_by_stamped_headers", {"headers": {"h": ["v" * 300, "ok", 7]}}),
    ("revoke_by_stamped_headers", {"headers": {"k" * 300: "v"}}),
    ("revoke_by_stamped_headers", {"headers": {"none": None, "after-none": "v"}}),
    ("revoke_by_stamped_headers", {"headers": ["no-equals", "k=v", 5]}),
    ("revoke_by_stamped_headers", {"headers": {"s": "v"}, "signal": "NOSUCH"}),
    ("revoke_by_stamped_headers", {"headers": {"s2": "v"}, "terminate": True, "signal": "NOSUCH"}),
    ("revoke_by_stamped_headers", {"headers": {"d": {"x": 1}, "n": 0, "nul": "a\x00b"}}),
    ("revoke_by_stamped_headers", {"headers": "garbage"}),
    ("revoke_by_stamped_headers", {"headers": None}),
]


def _never_storable(key: Any) -> bool:
    """Keys no table holds: not text, or empty (long, NUL and lone surrogates are stored by digest)."""
    return not isinstance(key, str) or not key


def _stamp(header: Any, value: Any) -> Target:
    try:
        return Target.stamp(header, value)
    except InvalidInput:  # not JSON: kept as is, never storable
        return Target("stamp", value, header)


def _why_not_storable(target: Target) -> str | None:
    keys = [target.value] + ([target.header] if target.kind == "stamp" else [])
    if any(_never_storable(k) for k in keys):
        return "never"
    return None


def _in_table(store: RevocationStore, targets: list[Target]) -> set[Target]:
    """The targets the table holds active (those the store cannot hold are not)."""
    holdable = []
    for target in targets:
        try:
            holdable.append(as_target(target))
        except InvalidInput:
            pass
    return {t for t, row in store.get_many(holdable).items() if row.active}


def _fresh_state() -> None:
    worker_state.revoked.clear()
    worker_state.revoked_stamps.clear()


def _memory() -> tuple[list[Any], dict[Any, list[Any]]]:
    stamps = {h: list(v) if isinstance(v, (list, tuple, set)) else [v] for h, v in worker_state.revoked_stamps.items()}
    return list(worker_state.revoked), stamps


def _call(handler: Any, state: Any, args: dict[str, Any]) -> Any:
    try:
        return handler(state, **args)
    except Exception as exc:  # what kombu's dispatch turns into the reply
        return {"error": repr(exc)}


@pytest.fixture
def worker(store: RevocationStore):  # type: ignore[no-untyped-def]
    """A worker's control state and sync on the test's store; stock handlers kept."""
    app = Celery("parity", broker="memory://", backend="cache+memory://")
    timer = Timer()
    state = SimpleNamespace(app=app, hostname="parity@test", consumer=SimpleNamespace(pool=None, timer=timer))
    settings = load_settings(environ={"REVSTORE_URL": store.url.render_as_string(hide_password=False)})
    sync = RevocationSync(store, settings, WorkerMemory(), "parity@test")
    control.install_wrappers()
    stock = {name: control._originals[name] for name in ("revoke", "terminate", "revoke_by_stamped_headers")}
    control.activate(sync)
    sync.load()
    sync.start()
    yield state, sync, stock
    control.activate(None)
    sync.close()
    timer.stop()
    _fresh_state()


def test_revstore_memory_is_a_superset_of_stock_and_the_table_holds_every_storable_key(worker, store) -> None:
    state, sync, stock = worker
    for name, args in ODD:
        _fresh_state()
        stock_reply = _call(stock[name], state, dict(args))
        stock_ids, stock_stamps = _memory()

        _fresh_state()
        sync.memory.memory_only.clear()
        sync.memory.memory_only_stamps.clear()
        reply = _call(celery_control.Panel.data[name], state, dict(args))
        ids, stamps = _memory()
        what = f"{name}({args!r:.120})"

        missing = [i for i in stock_ids if i not in ids]
        assert not missing, f"{what}: stock revoked {missing!r:.200} in memory, revstore did not"
        for header, values in stock_stamps.items():
            assert all(v in stamps.get(header, []) for v in values), f"{what}: stamp {header!r:.60} missing"

        wait_for(lambda: not sync._pending, 20, what=f"{what} to be committed")
        targets = [Target.task(i) for i in ids] + [_stamp(h, v) for h, values in stamps.items() for v in values]
        stored = _in_table(store, targets)
        unstored = [t for t in targets if t not in stored]
        assert all(_why_not_storable(t) == "never" for t in unstored), \
            f"{what}: storable keys not in the table: {[t for t in unstored if not _why_not_storable(t)]!r:.300}"
        reported = isinstance(reply, dict) and reply.get("revstore_not_stored")
        if unstored:
            assert reported, f"{what}: {unstored!r:.200} not stored, and the reply {reply!r:.300} does not say so"
        print(f"{what}\n  stock: {stock_reply!r:.160}\n  revstore: {reply!r:.240}")

    # a reload from the table keeps what only memory could hold
    _fresh_state()
    celery_control.Panel.data["revoke"](state, task_id=[LONG, 7, "reload-ok"])
    celery_control.Panel.data["revoke_by_stamped_headers"](state, headers={"k" * 300: "v"})
    wait_for(lambda: not sync._pending, 20, what="the reload case to be committed")
    rows, _ = store.load_active()
    sync.memory.replace(rows, keep=set())
    ids, stamps = _memory()
    assert {LONG, 7, "reload-ok"} <= set(ids) and stamps["k" * 300] == ["v"]


def test_an_unknown_signal_revokes_stores_and_reports(worker, store) -> None:
    state, sync, _ = worker
    reply = celery_control.Panel.data["revoke"](state, task_id="sig-x", terminate=True, signal="NOSUCH")
    assert "unknown signal 'NOSUCH'" in reply["error"] and "sig-x" in worker_state.revoked
    reply = celery_control.Panel.data["terminate"](state, signal="NOSUCH", task_id="term-x")
    assert "unknown signal" in reply["error"] and "term-x" in worker_state.revoked
    wait_for(lambda: store.is_revoked("sig-x") and store.is_revoked("term-x"), 20, what="both to be stored")
    assert not store.get("sig-x").terminate  # no signal could be sent: stored as a plain revoke
    celery_control.Panel.data["revoke"](state, task_id="sig-ok", terminate=True, signal="kill")
    wait_for(lambda: store.is_revoked("sig-ok"), 20, what="the valid terminate to be stored")
    row = store.get("sig-ok")
    assert row.terminate and row.signal == "SIGKILL"


def test_stamp_list_items_follow_celerys_rule_in_memory_and_table(worker, store) -> None:
    state, sync, stock = worker
    _fresh_state()
    stock["revoke_by_stamped_headers"](state, headers=["a=b=c"])
    stock_stamps = dict(worker_state.revoked_stamps)
    _fresh_state()
    celery_control.Panel.data["revoke_by_stamped_headers"](state, headers=["a=b=c"])
    assert stock_stamps == {"a": ["b"]} and worker_state.revoked_stamps == {"a": ["b"]}
    # one handler call, one write: once a=b is stored, nothing more of it comes
    wait_for(lambda: store.is_revoked(Target.stamp("a", "b")), 20, what="stamp a=b to be stored")
    assert not store.is_revoked(Target.stamp("a", "b=c"))


def test_shutdown_disconnects_the_task_received_receiver(sqlite_url: str) -> None:
    """Each worker started in one process (tests, embedded workers) must not leave a receiver behind."""
    from celery import signals
    from celery.contrib.testing.worker import start_worker

    import revstore
    from revstore import migrate

    app = Celery("receivers", broker="memory://", backend="cache+memory://")
    app.conf.revstore_url = sqlite_url
    revstore.install(app)
    migrate.upgrade(RevocationStore(sqlite_url))

    def ours() -> list[Any]:
        return [r for r in signals.task_received.receivers if "Revstore" in repr(r)]

    before = len(ours())
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        assert len(ours()) == before + 1
    assert len(ours()) == before


def test_real_workers_over_redis_stock_and_revstore_side_by_side(cluster_factory, celery_app) -> None:
    """A few odd broadcasts to a stock worker and a revstore worker: revstore's memory holds all of stock's."""

    cluster = cluster_factory("postgresql", revstore_sync_interval=1)
    stock_worker = cluster.worker("stock", REVSTORE_URL="")  # no URL: the bootstep is off, stock Celery
    ours = cluster.worker("ours")
    for w in (stock_worker, ours):
        w.start(wait=False)
    for w in (stock_worker, ours):
        w.wait_ready()
    control_ = celery_app.app.control
    both = [stock_worker.nodename, ours.nodename]
    messages = [
        ("revoke", {"task_id": [LONG, 123, "side-ok"]}),
        ("revoke", {"task_id": "side-sig", "terminate": True, "signal": "NOSUCH"}),
        ("revoke_by_stamped_headers", {"headers": {"h": ["v" * 300, "ok"]}}),
        ("revoke_by_stamped_headers", {"headers": ["a=b=c"]}),
    ]
    replies = [control_.broadcast(name, arguments=args, destination=both, reply=True, timeout=3) for name, args in messages]
    ours_replies = [r[ours.nodename] for reply in replies for r in reply if ours.nodename in r]
    assert len(ours_replies) == len(messages)
    assert "123" in str(ours_replies[0]["revstore_not_stored"]) and LONG[:40] not in str(ours_replies[0])
    assert "unknown signal 'NOSUCH'" in ours_replies[1]["error"]
    assert "revstore_not_stored" not in ours_replies[2]  # a 300-character stamp value is stored

    sent = {LONG, 123, "side-ok", "side-sig"}  # other tests' broadcasts without a destination reach these workers too
    stock_ids = revoked_on(celery_app.app, stock_worker) & sent
    assert stock_ids == sent  # what stock holds ...
    assert stock_ids <= revoked_on(celery_app.app, ours)  # ... revstore holds too
    wait_for(lambda: all(cluster.store.is_revoked(t) for t in
                         ("side-ok", "side-sig", LONG, Target.stamp("h", "ok"), Target.stamp("h", "v" * 300),
                          Target.stamp("a", "b"))), 10,
             what="the storable keys to be written through")
    assert not cluster.store.is_revoked(Target.stamp("a", "b=c"))

    # stamps, which `inspect revoked` does not show: stamped tasks must not run on either worker
    stamped: dict[str, list[str]] = {}
    for w in (stock_worker, ours):
        for header, value in (("h", "ok"), ("h", "v" * 300), ("a", "b")):
            tag = f"{w.name}-{header}-{len(value)}"
            sig = celery_app.record.s(tag).set(queue=w.queue)
            sig.stamp(**{header: value})
            stamped.setdefault(w.name, []).append(sig.apply_async().id)
        send(celery_app, w.queue, f"{w.name}-control")
    wait_for(lambda: all(cluster.finished(f"{w.name}-control") for w in (stock_worker, ours)), 20,
             what="both control tasks")
    for w in (stock_worker, ours):
        wait_for(lambda w=w: discarded(w, *stamped[w.name]), 10, what=f"{w.name} to discard its stamped tasks")
    assert not [p.name for p in cluster.out.glob("started-*") if "control" not in p.name]
