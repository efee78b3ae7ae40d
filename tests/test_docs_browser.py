"""Issue 25: the documentation site in a real browser (Debian's chromium, headless), at phone and desktop widths.

The site is built with ``mkdocs build --strict`` into the docs build output
folder (``site/``, or ``$REVSTORE_SITE_DIR``) and served over HTTP, as a
reader gets it.  The home page and one long page are loaded at 390 px and
1280 px wide: neither may scroll sideways, and the navigation must be
usable (the drawer opens on a phone, the sidebar shows on a desktop).  The
screenshots land in ``site/screenshots/``, next to the site, where CI keeps
them as artifacts.
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = Path(os.environ.get("REVSTORE_SITE_DIR") or ROOT / "site")
SIZES = {"phone": (390, 844), "desktop": (1280, 860)}
#: the home page, and the longest reference page (a wide settings table, long command lines)
PAGES = {"home": "", "configuration": "configuration/"}


@pytest.fixture(scope="module")
def site():  # type: ignore[no-untyped-def]
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(SITE)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def _overflow(driver) -> int:  # type: ignore[no-untyped-def]
    return driver.execute_script(
        "return Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
        " - document.documentElement.clientWidth")


@pytest.mark.parametrize("size", list(SIZES))
def test_docs_site_fits_phone_and_desktop_widths(site, browser, size) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    out = SITE / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    width, height = SIZES[size]
    browser.set_window_size(width, height)
    for name, path in PAGES.items():
        browser.get(site + path)
        assert browser.find_elements(By.CSS_SELECTOR, "article h1"), f"{name}: no page content"
        # the window is the viewport the page sees (chromium's window includes no chrome in headless mode)
        assert browser.execute_script("return window.innerWidth") == width
        overflow = _overflow(browser)
        shot = out / f"{name}-{width}px.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 8_000, shot
        assert overflow <= 0, f"{name} scrolls sideways by {overflow} px at {width} px wide (see {shot})"
        search = browser.find_elements(By.CSS_SELECTOR, "label[for='__search']")
        assert search, f"{name}: no search"
        if size == "phone":  # the navigation is a drawer behind the menu button
            button = browser.find_element(By.CSS_SELECTOR, "label.md-header__button[for='__drawer']")
            assert button.is_displayed()
            button.click()
            browser.implicitly_wait(0)
            links = [a for a in browser.find_elements(By.CSS_SELECTOR, "nav.md-nav--primary a.md-nav__link")
                     if a.is_displayed()]
            assert browser.execute_script("return document.getElementById('__drawer').checked"), name
            assert len(links) >= 3, f"{name}: the drawer shows {len(links)} links"
            browser.save_screenshot(str(out / f"{name}-{width}px-menu.png"))
            button = browser.find_element(By.CSS_SELECTOR, "label.md-overlay[for='__drawer']")
            browser.execute_script("document.getElementById('__drawer').checked = false")
        else:
            links = [a for a in browser.find_elements(By.CSS_SELECTOR, "nav.md-nav--primary a.md-nav__link")
                     if a.is_displayed()]
            assert len(links) >= 5, f"{name}: the sidebar shows {len(links)} links"
