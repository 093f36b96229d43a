# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The web demo (demo/app.py) in a real browser: the app serves a model whose predictions are
known (tests/tools/app_testing.py: "stripes" everywhere, one panoptic segment) on a free local
port; headless Chromium uploads an image and a broken file through the page, switches the task,
and the page must show the overlay (not the image itself), the table of segments, the reader's
message for the broken file, and load nothing from outside the app's own address. A screenshot
goes to output/browser_screenshots/.
"""

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.paths import REPO_ROOT
from tests.tools.app_testing import SHAPES_NAMES, WINNER, write_known_model

START_TIMEOUT_S = 120
WAIT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_served(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"demo/app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(
        f"demo/app.py did not serve {url} in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
    )


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """The URL of demo/app.py serving the known model, stopped after the module's tests."""
    folder = tmp_path_factory.mktemp("app")
    config, weights = write_known_model(folder / "run")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = folder / "app.log"
    command = [sys.executable, "demo/app.py", "--config-file", str(config)]
    command += ["--weights", str(weights), "--port", str(port), "--runs-dir", str(folder)]
    # A "shapes validation split" of one picture for the page's example choice.
    examples = folder / "datasets" / "shapes" / "images" / "val"
    examples.mkdir(parents=True)
    Image.fromarray(np.full((64, 80, 3), 128, np.uint8)).save(examples / "000000.jpg")
    env = {**os.environ, "DETECTRON2_DATASETS": str(folder / "datasets")}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        _wait_until_served(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 96 x 128 image (a grey ramp) and a file that is not an image, by name."""
    folder = tmp_path_factory.mktemp("uploads")
    ramp = np.tile(np.linspace(20, 230, 128, dtype=np.uint8), (96, 1))
    Image.fromarray(np.stack([ramp] * 3, axis=-1)).save(folder / "ramp.png")
    (folder / "broken.png").write_text("this is not a picture\n")
    return {"image": folder / "ramp.png", "broken": folder / "broken.png"}


def _wait(browser, condition, what: str, shown=None):
    """
    The first truthy value of ``condition(browser)`` within WAIT_S seconds; on failure the
    message shows what ``shown(browser)`` returns then.
    """
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        try:
            value = condition(browser)
        except Exception:  # the element is being re-rendered
            value = None
        if value:
            return value
        time.sleep(0.25)
    now = f"; the page shows {shown(browser)!r}" if shown else ""
    pytest.fail(f"the page did not show {what} within {WAIT_S} s{now}")


def _text(browser, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text


def _overlay_src(browser) -> str:
    from selenium.webdriver.common.by import By

    images = browser.find_elements(By.CSS_SELECTOR, "#overlay img")
    return images[0].get_attribute("src") if images else ""


def _upload(browser, path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, "#images input[type=file]").send_keys(str(path))


def _table_rows(browser) -> list:
    """The cells of the segments table's body rows (header excluded)."""
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, "#segments tbody tr")
    cells = [r.find_elements(By.CSS_SELECTOR, "td") for r in rows]
    return [[c.get_attribute("textContent").strip() for c in row] for row in cells]


def test_served_html_loads_nothing_from_elsewhere(app_url):
    with urllib.request.urlopen(app_url, timeout=30) as response:
        page = response.read().decode()
    # What the page loads: scripts, styles, fonts, frames (meta tags and the API examples in
    # the embedded config are not loaded).
    loaded = re.findall(r'<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)="([^"]+)"', page)
    loaded += re.findall(r"@import\s+(?:url\()?['\"]?([^'\")\s;]+)", page)
    loaded += re.findall(r"url\(['\"]?(https?:[^'\")]+)", page)
    assert loaded, page[:2000]
    outside = [u for u in loaded if re.match(r"(https?:)?//", u) and not u.startswith(app_url)]
    assert not outside, outside
    with urllib.request.urlopen(app_url + "theme.css", timeout=30) as response:
        theme = response.read().decode()
    assert not re.findall(r"url\(['\"]?(?:https?:)?//|@import", theme)


def test_upload_shows_overlay_table_and_the_readers_message(
    app_url, browser, screenshot_dir, files
):
    from selenium.webdriver.common.by import By

    browser.get(app_url)
    _wait(
        browser,
        lambda b: b.find_elements(By.CSS_SELECTOR, "#images input[type=file]"),
        "the upload",
    )
    _upload(browser, files["image"])
    src = _wait(browser, _overlay_src, "the overlay")
    expected = [["1", WINNER, "stuff", "100", "0.916"]]
    _wait(browser, lambda b: _table_rows(b) == expected, "the table", _table_rows)
    assert f"{WINNER} (100.0%)" in _text(browser, "legend")
    assert "Predicted 1 of 1 image(s)." in _text(browser, "status")
    with urllib.request.urlopen(src, timeout=30) as response:
        overlay = np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))
    uploaded = np.asarray(Image.open(files["image"]).convert("RGB"))
    assert overlay.shape == uploaded.shape
    assert np.abs(overlay.astype(int) - uploaded).mean() > 10  # drawn over, not the image
    # The downloads, fetched through the page's links.
    links = browser.find_elements(By.CSS_SELECTOR, "#downloads a[href]")
    hrefs = {Path(a.get_attribute("download") or "").name: a.get_attribute("href") for a in links}
    assert {"ramp_panoptic_ids.png", "ramp_panoptic_segments.json"} <= set(hrefs), hrefs
    with urllib.request.urlopen(hrefs["ramp_panoptic_segments.json"], timeout=30) as response:
        document = json.loads(response.read())
    assert [s["class"] for s in document["segments"]] == [WINNER]
    with urllib.request.urlopen(hrefs["ramp_panoptic_ids.png"], timeout=30) as response:
        ids = np.asarray(Image.open(io.BytesIO(response.read())))
    assert ids.shape == (96, 128, 3) and (ids == [1, 0, 0]).all()  # segment 1 everywhere

    # The semantic task: one row per class, its id the class id.
    browser.find_element(By.CSS_SELECTOR, "#task input[value=semantic]").click()
    expected = [str(SHAPES_NAMES.index(WINNER)), WINNER, "stuff", "100", "0.916"]
    _wait(browser, lambda b: _table_rows(b) == [expected], "the semantic table", _table_rows)
    browser.save_screenshot(os.fspath(screenshot_dir / "app_page.png"))

    # A file that is not an image: the reader's one-line reason, and the app keeps serving.
    _upload(browser, files["broken"])
    message = "Cannot read image broken.png: not an image (unknown format)"
    status = lambda b: _text(b, "status")  # noqa: E731
    _wait(browser, lambda b: message in status(b), "the reader's message", status)
    browser.save_screenshot(os.fspath(screenshot_dir / "app_page_broken_upload.png"))
    assert "Predicted 1 of 2 image(s)." in status(browser)  # the files add up
    _upload(browser, files["image"])
    _wait(browser, lambda b: "Predicted 2 of 3" in status(b), "a new prediction", status)

    # Everything the browser fetched came from the app itself.
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    outside = [u for u in fetched if not u.startswith((app_url, "data:", "blob:"))]
    assert fetched and not outside, outside


def test_example_image_and_thresholds(app_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(app_url)
    choice = _wait(
        browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#example input"), "examples"
    )
    choice[0].click()

    def options(b):
        found = b.find_elements(By.CSS_SELECTOR, "#example li")
        return found if [o.text.strip() for o in found] == ["000000.jpg"] else None

    texts = lambda b: [o.text for o in b.find_elements(By.CSS_SELECTOR, "#example li")]  # noqa: E731
    option = _wait(browser, options, "the one shapes validation image", texts)
    option[0].click()
    expected = [["1", WINNER, "stuff", "100", "0.916"]]
    _wait(browser, lambda b: _table_rows(b) == expected, "the example's table", _table_rows)
    assert "Predicted 1 of 1 image(s)." in _text(browser, "status")

    # Above the queries' class probability (0.901) no segment is left; back at 0.8 it returns.
    box = browser.find_element(By.CSS_SELECTOR, "#object-mask-threshold input[type=number]")
    box.clear()
    box.send_keys("0.95", Keys.ENTER)
    _wait(browser, lambda b: _table_rows(b) in ([], [[""] * 5]), "no segment", _table_rows)
    box.clear()
    box.send_keys("0.8", Keys.ENTER)
    _wait(browser, lambda b: _table_rows(b) == expected, "the segment again", _table_rows)
