"""The Space in a real browser: Debian's chromium driven by Playwright, against the app served on 127.0.0.1."""

import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from tests.space_server import serve


CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
APP = Path(__file__).resolve().parents[2] / "spaces_demo" / "app.py"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"),
]


@pytest.fixture(scope="module")
def served(space_model, tmp_path_factory):
    base, adapter = space_model
    proc, url = serve(APP, base, adapter, tmp_path_factory.mktemp("app") / "app.log")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def test_upload_two_images_and_get_the_description(served, browser, space_model, pair_files, tmp_path, capsys):
    from trainer.evaluation.predict import main as predict_main

    before, after, _ = pair_files
    predict_main(
        [
            "--model",
            str(space_model[0]),
            "--adapter",
            str(space_model[1]),
            "--max-new-tokens",
            "128",
            str(before),
            str(after),
        ]
    )
    expected = capsys.readouterr().out.strip()

    page = browser.new_page(viewport={"width": 1200, "height": 1400})
    external = []
    page.on(
        "request", lambda r: None if r.url.startswith(served) or r.url.startswith("data:") else external.append(r.url)
    )
    page.goto(served, wait_until="networkidle")
    page.locator("#before input[type=file]").set_input_files(str(before))
    page.locator("#after input[type=file]").set_input_files(str(after))
    page.wait_for_selector("#before img")
    page.wait_for_selector("#after img")
    page.locator("#run").click()
    page.wait_for_function(
        "() => { const t = document.querySelector('#output textarea'); return t && t.value.length > 0; }",
        timeout=60_000,
    )
    assert page.locator("#output textarea").input_value().strip() == expected
    page.screenshot(path=str(tmp_path / "space-answer.png"), full_page=True)
    if os.environ.get("GEOLLAVA_SCREENSHOT"):
        shutil.copy(tmp_path / "space-answer.png", os.environ["GEOLLAVA_SCREENSHOT"])
    assert not external, f"the page made external requests: {external[:5]}"


def test_bad_upload_shows_the_error_and_the_app_stays_up(served, browser, pair_files, tmp_path):
    before, after, notes = pair_files
    page = browser.new_page(viewport={"width": 1200, "height": 1400})
    page.goto(served, wait_until="networkidle")
    page.get_by_text("Other inputs").click()
    page.locator("#before_file input[type=file]").set_input_files(str(notes))
    page.locator("#after_file input[type=file]").set_input_files(str(after))
    page.locator("#run").click()
    page.wait_for_function(
        "() => (document.querySelector('#status')?.innerText || '').includes('Could not use')", timeout=60_000
    )
    assert "notes.txt" in page.locator("#status").inner_text()
    page.screenshot(path=str(tmp_path / "space-error.png"), full_page=True)
    # Still serving: the page answers again.
    assert urllib.request.urlopen(served, timeout=5).status == 200


def test_a_dated_time_series_gets_the_same_text_as_geollava_predict(served, browser, space_model, pair_files, capsys):
    from trainer.evaluation.predict import main as predict_main

    before, after, _ = pair_files
    series = [str(before), str(after), str(before)]
    dates = "2016-03-02,2017-08-15,2019-01-30"
    options = ["--model", str(space_model[0]), "--adapter", str(space_model[1]), "--max-new-tokens", "128"]
    assert predict_main([*options, "--dates", dates, *series]) == 0
    expected = capsys.readouterr().out.strip()

    page = browser.new_page(viewport={"width": 1200, "height": 1600})
    page.goto(served, wait_until="networkidle")
    page.get_by_text("A time series: 2 to 8 images").click()
    page.locator("#sequence input[type=file]").set_input_files(series)
    page.locator("#dates textarea").fill(dates.replace(",", ", "))
    page.wait_for_function("() => document.querySelectorAll('#sequence .file-preview tr, #sequence li').length >= 3")
    page.locator("#run").click()
    page.wait_for_function(
        "() => { const t = document.querySelector('#output textarea'); return t && t.value.length > 0; }",
        timeout=60_000,
    )
    assert page.locator("#output textarea").input_value().strip() == expected
    assert "✅" in page.locator("#status").inner_text()
