"""A real headless Chromium driven through ChromeDriver (Debian's `chromium` and `chromium-driver`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,2400")


def require_chromium() -> tuple[str, str]:
    """The paths of Chromium and ChromeDriver; skips (fails with `CI` set) when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        reason = "Chromium and ChromeDriver are not installed; scripts/services installs them (Debian packages " \
                 "chromium and chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so browser tests must run)")
        pytest.skip(reason)
    return browser, driver


@contextmanager
def chromium() -> Iterator[object]:
    """A Selenium WebDriver on a fresh headless Chromium profile that keeps the browser console log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
        try:
            yield session
        finally:
            session.quit()
