"""What a radiologist sees, in real Chromium (Debian's chromium and chromium-driver, driven by
selenium): studies sent with dcmsend go through the real receiver and worker; the review app
shows the flagged one first, paints its image and heatmap, takes feedback and counts it on the
dashboard. A failing run leaves a screenshot; CXRTRIAGE_SCREENSHOT_DIR keeps the page shots."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from tests.conftest import BUNDLED
from tests.factory import radiograph, write_study
from tests.peers import echoscu
from tests.servers import LOOPBACK, binary, free_port, wait_for

USER, PASSWORD = "dr.house", "a long enough password"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def dcmsend(port: int, files: list[Path]) -> None:
    result = subprocess.run(
        [binary("dcmsend"), "-aet", "MODALITY", "-aec", "CXRTRIAGE", LOOPBACK, str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def api(port: int, path: str) -> Any:
    request = urllib.request.Request(f"http://{LOOPBACK}:{port}{path}")
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1500,1100",
        "--hide-scrollbars",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


PIXEL_STATS = """
const img = arguments[0];
if (!img.complete || img.naturalWidth === 0) { return null; }
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const ctx = canvas.getContext('2d');
ctx.drawImage(img, 0, 0);
const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
let n = 0, sum = 0, sq = 0;
for (let i = 0; i < data.length; i += 16) { const v = data[i]; n++; sum += v; sq += v * v; }
const mean = sum / n;
return {width: img.naturalWidth, height: img.naturalHeight, mean: mean, std: Math.sqrt(sq / n - mean * mean)};
"""


def shot(element: Any) -> np.ndarray:
    return np.asarray(Image.open(BytesIO(element.screenshot_as_png)).convert("RGB"), dtype=np.float32)


@pytest.mark.slow
def test_review_flow_in_chromium(tmp_path: Path, service_factory) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    web_port = free_port()
    service = service_factory({"CXRTRIAGE_MODEL": str(BUNDLED), "CXRTRIAGE_WEB_PORT": str(web_port)})
    added = subprocess.run(
        [sys.executable, "-m", "cxrtriage.cli", "users", "add", USER, "--role", "radiologist"],
        input=PASSWORD + "\n",
        text=True,
        capture_output=True,
        cwd=service.workdir,
        env={**os.environ, **service.env},
        timeout=120,
    )
    assert added.returncode == 0, added.stderr[-2000:]
    service.start("serve", "serve")
    wait_for(lambda: api(web_port, "/api/worklist") == [], 90, "the review app", interval=0.5)
    wait_for(lambda: echoscu(service.port), 90, "the receiver's C-ECHO", interval=0.5)

    normal_uid, pneumonia_uid, lateral_uid = generate_uid(), generate_uid(), generate_uid()
    sent = {  # the normal study first: the flagged one must still come first
        normal_uid: radiograph(normal_uid, "normal-1", StudyDescription="XR CHEST AP"),
        pneumonia_uid: radiograph(pneumonia_uid, "pneumonia-1", StudyDescription="XR CHEST AP"),
        lateral_uid: radiograph(lateral_uid, "normal-2", ViewPosition="LL", StudyDescription="XR CHEST LAT"),
    }
    for uid, ds in sent.items():
        dcmsend(service.port, write_study(tmp_path / uid, [ds]))
    wait_for(
        lambda: (
            {i["study_uid"]: i["state"] for i in api(web_port, "/api/worklist")}
            == {normal_uid: "done", pneumonia_uid: "done", lateral_uid: "skipped"}
        ),
        180,
        "all three studies read",
        interval=0.5,
    )

    driver = browser()
    shots = (
        Path(os.environ.get("CXRTRIAGE_SCREENSHOT_DIR", ""))
        if os.environ.get("CXRTRIAGE_SCREENSHOT_DIR")
        else None
    )
    base = f"http://{LOOPBACK}:{web_port}"
    wait = WebDriverWait(driver, 30)
    try:
        driver.get(base + "/")
        assert "/login" in driver.current_url  # pages send strangers to the form
        driver.find_element(By.ID, "username").send_keys(USER)
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "sign-in").click()
        wait.until(ec.presence_of_element_located((By.ID, "worklist")))
        rows = driver.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")
        assert [r.get_attribute("data-study-uid") for r in rows] == [pneumonia_uid, normal_uid, lateral_uid]
        assert "FLAGGED" in rows[0].text and "FLAGGED" not in rows[1].text
        assert "no frontal chest radiograph" in rows[2].text  # not analysed, listed last with its reason
        assert "SENTINELNAME" in rows[0].text  # the patient's name, to find them in the PACS
        if shots:
            driver.save_screenshot(str(shots / "worklist.png"))

        rows[0].find_element(By.TAG_NAME, "a").click()
        radiograph_img = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "img.radiograph")))
        stats = wait.until(lambda d: d.execute_script(PIXEL_STATS, radiograph_img))
        # A picture (not a blank or an error) at its own size: 224 pixels, never squashed or blown up.
        assert (stats["width"], stats["height"]) == (224, 224) and stats["std"] > 20, stats
        heatmap = driver.find_element(By.CSS_SELECTOR, "img.heatmap")
        wait.until(
            lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heatmap)
        )
        stack = driver.find_element(By.CSS_SELECTOR, ".stack")
        toggle = driver.find_element(By.ID, "heatmap-toggle")
        assert toggle.is_selected() and heatmap.value_of_css_property("visibility") == "visible"
        with_heat = shot(stack)
        if shots:
            driver.save_screenshot(str(shots / "study-heatmap.png"))
        toggle.click()
        assert heatmap.value_of_css_property("visibility") == "hidden"
        without = shot(stack)
        # Painted gray without the map; with it, somewhere clearly coloured.
        assert np.abs(without[..., 0] - without[..., 2]).max() < 8
        assert np.abs(with_heat[..., 0] - with_heat[..., 2]).max() > 60
        assert np.abs(with_heat - without).mean() > 2
        toggle.click()
        assert heatmap.value_of_css_property("visibility") == "visible"

        driver.find_element(By.ID, "verdict-agree").click()
        driver.find_element(By.NAME, "comment").send_keys("right lower lobe consolidation")
        driver.find_element(By.ID, "feedback-submit").click()
        verdicts = wait.until(ec.presence_of_element_located((By.ID, "verdicts")))
        assert f"{USER}: agree" in verdicts.text

        # "Try an image": the page shows the upload at once and the worker's answer when it comes.
        driver.get(base + "/try")
        upload = tmp_path / "upload.dcm"
        wide = radiograph(generate_uid(), "pneumonia-1", PixelSpacing=[0.1, 0.2])
        wide.save_as(upload, enforce_file_format=True)
        driver.find_element(By.ID, "file").send_keys(str(upload))
        driver.find_element(By.ID, "try-submit").click()
        answer = wait.until(ec.presence_of_element_located((By.ID, "try-answer")))
        shown = driver.find_element(By.CSS_SELECTOR, "img.radiograph")
        stats = wait.until(lambda d: d.execute_script(PIXEL_STATS, shown))
        assert (stats["width"], stats["height"]) == (448, 224), stats  # columns 0.2 mm apart: twice as wide
        WebDriverWait(driver, 180).until(lambda d: answer.get_attribute("data-state") == "done")
        probabilities = driver.find_element(By.ID, "try-probabilities")
        assert "PNEUMONIA" in probabilities.text and "NORMAL" in probabilities.text
        heat = driver.find_element(By.ID, "try-heatmap")
        loaded = "return arguments[0].complete && arguments[0].naturalWidth"
        wait.until(lambda d: d.execute_script(loaded, heat))
        assert heat.value_of_css_property("visibility") == "visible"
        assert driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]",
                                     heat) == [448, 224]  # the map in register with the image
        if shots:
            driver.save_screenshot(str(shots / "try.png"))

        driver.get(base + "/dashboard")
        row = wait.until(
            ec.presence_of_element_located((By.CSS_SELECTOR, "#stats tbody tr[data-model-version]"))
        )
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        assert cells[1:3] == ["2", "1"]  # studies read, flagged
        assert cells[4].startswith("1 (33%)")  # not analysed
        assert cells[5:7] == ["1", "1"]  # feedback, agree
        assert cells[9] == "100%"  # PPV among flagged with feedback
        assert len(driver.find_elements(By.CSS_SELECTOR, ".dashboard-figure svg")) == 1
        if shots:
            driver.set_window_size(1500, 1650)  # the whole dashboard
            driver.save_screenshot(str(shots / "dashboard.png"))
        assert api(web_port, "/api/worklist")[0]["verdict"] == "agree"
    except BaseException:
        failure = tmp_path / "browser-failure.png"
        driver.save_screenshot(str(failure))
        sys.stderr.write(f"\nbrowser screenshot at failure: {failure}\n")
        raise
    finally:
        driver.quit()
    service.stop()
    service.check_logs()
