# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The run report (tools/report.py, mask_former.report) in a real browser: headless Chromium opens
report.html from disk and every figure loads (naturalWidth > 0) from the folder beside it; the
screenshot is saved as output/browser_screenshots/report_page.png.
"""

from pathlib import Path

from mask_former.report import write_report
from tests.tools.test_report import FIGURE_NAMES, make_run_folder


def test_report_page_loads_every_figure(browser, screenshot_dir, tmp_path):
    report = Path(write_report(str(make_run_folder(tmp_path)), targets={"sem_seg/mIoU": 60}))
    browser.get(report.as_uri())
    browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        Promise.all(Array.from(document.images).map(
            img => img.complete ? null : new Promise(r => { img.onload = img.onerror = r; })
        )).then(() => done());
        """
    )
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.currentSrc, i.complete, "
        "i.naturalWidth, i.naturalHeight]);"
    )
    assert {Path(src).stem for src, *_ in images} == FIGURE_NAMES
    for src, complete, width, height in images:
        assert complete and width > 0 and height > 0, f"{src} did not load"
        # Read from the folder beside the report, not from elsewhere.
        assert src.startswith(report.parent.as_uri() + "/report_figures/"), src
    assert browser.title == f"Run report: {report.parent.name}"
    assert "Per class" in browser.find_element("tag name", "body").text
    browser.save_screenshot(str(screenshot_dir / "report_page.png"))
    assert (screenshot_dir / "report_page.png").stat().st_size > 0
