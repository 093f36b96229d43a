# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
A real browser for the page tests: headless Chromium from Debian's packages (``chromium`` and
``chromium-driver``), driven by Selenium (``requirements/browser.txt``). No browser is downloaded.
``.ci/run`` installs both when they are missing; ``make browser-test`` runs this folder.
"""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("MASK_FORMER_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MASK_FORMER_CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "output" / "browser_screenshots"


def _require_browser():
    """Fail (never skip) with what to install when the browser or its driver is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(
            f"browser tests need {missing}: apt-get install chromium chromium-driver "
            "(or set MASK_FORMER_CHROMIUM / MASK_FORMER_CHROMEDRIVER)"
        )


@pytest.fixture
def browser():
    """A headless Chromium ``selenium.webdriver.Chrome``, 1280x1600, closed after the test."""
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1600",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshot_dir():
    """Where browser tests save their screenshots (``output/browser_screenshots/``)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
