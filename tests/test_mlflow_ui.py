"""The MLflow UI shows what a run records, checked in headless Chromium (Debian's package)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from playwright.sync_api import expect, sync_playwright

from pipelines import speech, tracking
from pipelines.speech import SpeechConfig
from tests.processes import free_port

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium on a machine without internet: no background connections, no sandbox as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SCREENSHOTS = Path(os.environ.get("UI_SCREENSHOT_DIR", Path(__file__).parent / "artifacts"))


def start_ui(store: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(store.parent / "mlflow-ui.log", "wb")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
         tracking.local_store_uri(store), "--host", "127.0.0.1", "--port", str(port)],
        cwd=store.parent, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return process, url
        except OSError:
            time.sleep(1)
        if process.poll() is not None:
            break
    process.terminate()
    pytest.fail(f"mlflow ui did not start:\n{(store.parent / 'mlflow-ui.log').read_text()}")


def test_ui_shows_runs_metrics_artifacts_and_the_champion(speech_dir: Path, tmp_path: Path):

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: .ci/run installs Debian's chromium package")
    store = tmp_path / "mlruns"
    result = speech.run(SpeechConfig.from_options(
        data_dir=str(speech_dir), store_dir=str(store), cache_dir=str(tmp_path / "cache"), units=8,
        depth=1, dense_units=0, epochs=1, batch_size=16))
    tracking.connect(None, store)
    experiment_id = MlflowClient().get_experiment_by_name("speech-commands").experiment_id
    run_id = result["run_id"]

    process, url = start_ui(store)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=30_000)

            page.goto(f"{url}/#/experiments/{experiment_id}/runs")
            expect(page.get_by_text("speech-crnn-bigru8-s0").first).to_be_visible()  # its name
            page.screenshot(path=SCREENSHOTS / "ui-runs.png")

            page.goto(f"{url}/#/experiments/{experiment_id}/runs/{run_id}")
            expect(page.get_by_text("test_accuracy").first).to_be_visible()
            expect(page.get_by_text("registered as version 1").first).to_be_visible()  # note
            page.screenshot(path=SCREENSHOTS / "ui-run.png")

            page.goto(f"{url}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/"
                      "plots/confusion_matrix.png")
            expect(page.get_by_text("plots/confusion_matrix.png").first).to_be_visible()
            image = page.locator("img[src^='blob:']").first  # the artifact, fetched and shown
            expect(image).to_be_visible()
            assert image.evaluate("img => img.naturalWidth") > 300  # the PNG really decoded
            page.screenshot(path=SCREENSHOTS / "ui-confusion-matrix.png")

            page.goto(f"{url}/#/models/speech-commands")
            version_row = page.get_by_role("row").filter(has_text="Version 1")
            expect(version_row).to_contain_text("champion")
            expect(version_row).to_contain_text("test_accuracy")
            expect(page.get_by_text("Keyword spotting on Google Speech Commands").first
                   ).to_be_visible()  # the registered model's description
            page.screenshot(path=SCREENSHOTS / "ui-registered-model.png")

            page.goto(f"{url}/#/models/speech-commands/versions/1")
            expect(page.get_by_text("data digest").first).to_be_visible()  # its description
            expect(page.get_by_text("champion").first).to_be_visible()
            page.screenshot(path=SCREENSHOTS / "ui-model-version.png")
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
