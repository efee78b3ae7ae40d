"""Issues 14 and 27: the console in a real browser (Debian's chromium, headless) against real workers.

An operator logs in, revokes a task a worker holds from the form, finds it,
restores it; the table and the worker's memory follow each step.  The
browser reaches the console as in production: through a real nginx that
terminates TLS and serves it under a sub-path (/revstore), forwarding the
scheme and the client's address from a trusted address only.  The
screenshots (desktop and phone widths) are the ones in docs/console.md:
set REVSTORE_SCREENSHOTS=docs/img to refresh them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import httpx

from console_server import ConsoleServer
from harness import revoked_on, wait_for
from nginx import Nginx
from revstore.web import Credentials

SIZES = {"desktop": (1280, 860), "phone": (390, 844)}


def shoot(driver, name: str, out: Path) -> None:  # type: ignore[no-untyped-def]
    """Screenshots of the current page at both widths; each must be a real, non-blank image that fits
    the window's width (no horizontal scrolling on a phone or a laptop)."""
    for label, (width, height) in SIZES.items():
        driver.set_window_size(width, height)
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{name} scrolls sideways by {overflow} px at {label} width"
        path = out / f"console-{name}-{label}.png"
        driver.save_screenshot(str(path))
        assert path.stat().st_size > 8_000, path
    driver.set_window_size(*SIZES["desktop"])


def test_operator_revokes_finds_and_restores_in_a_browser(browser, cluster_factory, celery_app, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    out = Path(os.environ.get("REVSTORE_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    cluster = cluster_factory("postgresql")
    worker = cluster.worker("a").start()
    store = cluster.store
    store.add([f"seed-{i:04d}" for i in range(1240)], reason="nightly import replayed twice")
    store.add(["wf-2024-11-25"], reason="bad workflow", terminate=True, expires=1800)
    held = f"held-{uuid.uuid4().hex[:8]}"
    celery_app.record.apply_async((held,), task_id=held, queue=worker.queue, countdown=120)
    wait_for(lambda: held in _reserved(celery_app, worker), 20, what="the worker to hold the ETA task")

    console = ConsoleServer(store, Credentials(token="browser-token"), celery_app.app,
                            forwarded_allow_ips="127.0.0.1", root_path="/revstore")
    proxy = Nginx(tmp_path / "nginx", console.port, "/revstore")
    base = proxy.url
    try:
        b = browser
        b.set_window_size(*SIZES["desktop"])
        b.get(base + "/login")
        b.find_element(By.ID, "token").send_keys("browser-token")
        b.find_element(By.ID, "login").click()
        wait_for(lambda: "Overview" in b.title, 10, what="the overview after login")
        cookie = b.get_cookie("revstore_session")
        assert cookie is not None and cookie["secure"] and cookie["path"] == "/revstore"  # HTTPS seen through nginx
        assert b.find_element(By.ID, "active-task").text == "1,241"  # thousands separated
        assert len(b.find_elements(By.CSS_SELECTOR, "svg.chart g.bar")) == 14  # one bar a day, empty days too
        shoot(b, "overview", out)

        b.get(base + "/revoke")
        b.find_element(By.ID, "ids").send_keys(held)
        b.find_element(By.ID, "reason").send_keys("customer cancelled <b>order</b>")
        b.find_element(By.ID, "expires").send_keys("2d")
        shoot(b, "revoke", out)
        b.find_element(By.ID, "submit").click()
        assert "broadcast sent" in wait_for(lambda: _text(b, "done"), 15, what="the revoke to be confirmed")
        row = store.get(held)
        assert row is not None and row.active and row.reason == "customer cancelled <b>order</b>"
        # at least the 2 days asked for (the worker holding the ETA task may extend it past the ETA)
        assert row.revoked_by == "web:token" and row.remaining > 1.9 * 86400
        wait_for(lambda: held in revoked_on(celery_app.app, worker), 10, what="the worker's memory to hold the revoke")

        b.get(base + "/revocations")
        Select(b.find_element(By.NAME, "kind")).select_by_value("task")
        b.find_element(By.NAME, "q").send_keys(held)
        b.find_element(By.CSS_SELECTOR, "form.filters button").click()
        wait_for(lambda: b.find_elements(By.LINK_TEXT, held), 10, what="the search result")
        b.get(base + "/revocations")
        shoot(b, "revocations", out)
        b.get(base + f"/revocations?q={held}")
        b.find_element(By.LINK_TEXT, held).click()
        assert "<b>order</b>" in b.find_element(By.ID, "reason").text  # shown as text, not markup
        shoot(b, "detail", out)
        b.find_element(By.ID, "restore").click()
        wait_for(lambda: _text(b, "state").startswith("restored"), 10, what="the detail page to show the restore")
        assert not store.is_revoked(held)
        wait_for(lambda: held not in revoked_on(celery_app.app, worker), 15, what="the worker to forget the revoke")

        b.get(base + "/fleet")
        table = b.find_element(By.ID, "workers").text
        assert worker.nodename in table and "up to date" in table
        shoot(b, "fleet", out)

        # what another site, or a script holding only the cookie, might try through the proxy: refused
        b.get(base + "/revoke")
        csrf = b.find_element(By.NAME, "csrf").get_attribute("value")
        with httpx.Client(verify=False, cookies={"revstore_session": cookie["value"]}) as forger:
            cross = forger.post(base + "/revoke", data={"csrf": csrf, "ids": "forged-1"},
                                headers={"Origin": "https://evil.example"})
            assert cross.status_code == 403 and "another site" in cross.text
            same = forger.post(base + "/api/revoke", json={"ids": ["forged-2"]}, headers={"Origin": proxy.origin})
            assert same.status_code == 403 and "X-CSRF-Token" in same.json()["error"]
        assert store.get_many(["forged-1", "forged-2"]) == {}
        assert "/revoke HTTP/1.1\" 403" in (tmp_path / "nginx" / "access.log").read_text()  # they went through nginx
    finally:
        proxy.close()
        console.close()


def test_chart_labels_fit_and_bars_show_their_value_on_hover(browser, tmp_path) -> None:
    """The overview's chart as Chromium draws it: a seven-digit y label is not clipped, and pointing at a
    day shows its count."""
    from datetime import date

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from revstore.web import chart

    css = Path(chart.__file__).parent / "static" / "style.css"
    svg = chart.bar_chart([("2026-11-20", 1_000_003), ("2026-11-25", 12)], today=date(2026, 11, 26))
    page = tmp_path / "chart.html"
    page.write_text(f'<!doctype html><link rel="stylesheet" href="{css.as_uri()}"><main>{svg}</main>')
    for width, height in SIZES.values():
        browser.set_window_size(width, height)
        browser.get(page.as_uri())
        frame = browser.find_element(By.CSS_SELECTOR, "svg.chart").rect
        labels = {t.text: t.rect for t in browser.find_elements(By.CSS_SELECTOR, "svg.chart text.axis")}
        assert "1,000,003" in labels and labels["1,000,003"]["x"] >= frame["x"], labels.get("1,000,003")
        bars = browser.find_elements(By.CSS_SELECTOR, "svg.chart g.bar")
        assert len(bars) == 14
        big, small = bars[7], bars[12]  # 2026-11-20 and 2026-11-25

        def shown(bar) -> str:  # type: ignore[no-untyped-def]
            value = bar.find_element(By.CSS_SELECTOR, "text.value")
            return value.text if value.value_of_css_property("opacity") == "1" else ""

        assert shown(big) == "" and shown(small) == ""
        ActionChains(browser).move_to_element(big.find_element(By.CSS_SELECTOR, "rect.hit")).perform()
        assert shown(big) == "1,000,003" and shown(small) == ""
        ActionChains(browser).move_to_element(small.find_element(By.CSS_SELECTOR, "rect.hit")).perform()
        assert shown(small) == "12" and shown(big) == ""


def _reserved(celery_app, worker) -> set[str]:  # type: ignore[no-untyped-def]
    replies = celery_app.app.control.inspect([worker.nodename], timeout=2).scheduled() or {}
    return {entry["request"]["id"] for entry in replies.get(worker.nodename, [])}


def _text(driver, element_id: str) -> str:  # type: ignore[no-untyped-def]
    """The element's text; "" while it is missing or its page is being replaced."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        found = driver.find_elements(By.ID, element_id)
        return found[0].text if found else ""
    except StaleElementReferenceException:
        return ""
