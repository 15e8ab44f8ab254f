"""What a radiologist sees, in real Chromium (Debian's chromium and chromium-driver, driven by
selenium): studies sent with dcmsend go through the real receiver and worker; the review app
shows the flagged one first, paints its image and heatmap, takes feedback and counts it on the
dashboard. Then the reading room on a seeded database: the canvas viewer (window, presets,
invert, zoom, pan, the heat map in register), five flagged studies reviewed with the keyboard
alone, and the worklist counting a new flagged study while it is open. A failing run leaves a
screenshot; CXRTRIAGE_SCREENSHOT_DIR keeps the page shots."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def screenshot_on_failure(driver: Any, failure: Path) -> Iterator[None]:
    """Quit the browser when done; after a failure, keep a screenshot of the page first."""
    try:
        yield
    except BaseException:
        driver.save_screenshot(str(failure))
        sys.stderr.write(f"\nbrowser screenshot at failure: {failure}\n")
        raise
    finally:
        driver.quit()


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


# Two animation frames: whatever the last input asked the canvas to draw has been drawn.
FRAMES = ("const done = arguments[arguments.length - 1]; "
          "requestAnimationFrame(() => requestAnimationFrame(done));")


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
    with screenshot_on_failure(driver, tmp_path / "browser-failure.png"):
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
        # The canvas takes over from the preview once the pixel values are in (static/viewer.js).
        figure = driver.find_element(By.CSS_SELECTOR, "figure.viewer")
        wait.until(lambda d: figure.get_attribute("data-viewer") == "ready")
        stack = driver.find_element(By.CSS_SELECTOR, ".stack")
        toggle = driver.find_element(By.ID, "heatmap-toggle")
        assert toggle.is_selected() and heatmap.value_of_css_property("visibility") == "visible"
        driver.execute_async_script(FRAMES)
        with_heat = shot(stack)
        if shots:
            driver.save_screenshot(str(shots / "study-heatmap.png"))
        toggle.click()
        driver.execute_async_script(FRAMES)
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
    service.stop()
    service.check_logs()


# --- the reading room: the viewer, keyboard review, the live worklist ------------------------------
# These serve a seeded database (tests/web_seed.py) from a uvicorn in this process: the images are
# real DICOM files, the heat map is stored as the worker stores it.

READER = ("alice", "correct horse battery")  # tests/integration/test_web_api.py's users
FLAGGED = (0.95, 0.9, 0.85, 0.8, 0.75)


@pytest.fixture(scope="module")
def reading_room(tmp_path_factory: pytest.TempPathFactory, tiny_package: Path) -> Any:
    """The review app on a database with five flagged studies (the first a 12-bit MONOCHROME1
    image, four times the sample's size, 0.15 mm x 0.3 mm pixels, two windows of its own and a
    stored heat map) and two unflagged ones; yields (base URL, database, folder, flagged UIDs)."""
    from cxrtriage.config import Settings
    from cxrtriage.db.session import Database
    from cxrtriage.web.app import create_app
    from tests.hostile_http import uvicorn_thread
    from tests.integration.test_web_api import _add_users
    from tests.web_seed import register, seed_study, stored_heatmap, stored_image

    tmp = tmp_path_factory.mktemp("reading-room")
    url = f"sqlite:///{tmp / 'web.db'}"
    _add_users(url)
    db = Database(url)
    flagged = []
    with db.session() as session:
        mv = register(session)
        for index, p in enumerate(FLAGGED):
            uid = generate_uid()
            if index == 0:
                image = stored_image(tmp / "images", uid, scale=4, bits=12, monochrome1=True,
                                     PixelSpacing=[0.15, 0.3], WindowCenter=[2050, 1500],
                                     WindowWidth=[3800, 1600],
                                     WindowCenterWidthExplanation=["STANDARD", "NARROW"])
            else:
                image = stored_image(tmp / "images", uid, name=("pneumonia-2", "normal-1")[index % 2])
            flagged.append(seed_study(session, mv, [p], paths=[str(image)]))
            if index == 0:
                session.flush()
                stored_heatmap(session, image, mv, tmp, spot=(0.3, 0.7))
        for p in (0.2, 0.1):
            seed_study(session, mv, [p], paths=[str(stored_image(tmp / "images", name="normal-2"))])
    settings = Settings(database_url=url, storage_dir=tmp / "storage", broker_dir=tmp / "broker",
                        model=tiny_package)
    with uvicorn_thread(create_app(settings, db)) as port:
        yield f"http://{LOOPBACK}:{port}", db, tmp, flagged
    db.engine.dispose()


def signed_in(base: str) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser()
    driver.get(base + "/login")
    driver.find_element(By.ID, "username").send_keys(READER[0])
    driver.find_element(By.ID, "password").send_keys(READER[1])
    driver.find_element(By.ID, "sign-in").click()
    WebDriverWait(driver, 30).until(lambda d: "/login" not in d.current_url
                                    and d.find_elements(By.ID, "worklist"))
    return driver


def reader_api(base: str, path: str) -> Any:
    request = urllib.request.Request(base + path)
    request.add_header("Authorization", "Basic " + base64.b64encode(":".join(READER).encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def keys(driver: Any, *sequence: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*sequence).perform()


def viewer_state(driver: Any) -> dict[str, Any]:
    driver.execute_async_script(FRAMES)  # what the last input asked for is on the canvas
    state: dict[str, Any] = driver.execute_script("return window.cxrViewers[0].describe()")
    return state


CANVAS_STATS = """
const v = window.cxrViewers[0], r = v.rect(), c = v.canvas;
const x0 = Math.max(0, Math.round(r.x)), y0 = Math.max(0, Math.round(r.y));
const x1 = Math.min(c.width, Math.round(r.x + r.w)), y1 = Math.min(c.height, Math.round(r.y + r.h));
const d = c.getContext('2d').getImageData(x0, y0, x1 - x0, y1 - y0).data;
let n = 0, sum = 0, colour = 0;
for (let i = 0; i < d.length; i += 4) { n++; sum += d[i + 1]; colour += Math.abs(d[i] - d[i + 2]); }
return {mean: sum / n, colour: colour / n};
"""

# Where the heat map shows on the canvas, in canvas pixels: the centroid of what it changes, drawn
# once over the image painted white (so the picture underneath weighs nothing) and once without.
HEAT_CENTROID = """
const v = window.cxrViewers[0], c = v.canvas, ctx = c.getContext('2d');
const toggle = document.getElementById('heatmap-toggle');
const kept = v.settings;
v.settings = {kind: 'window', center: -1e9, width: 1, fn: 'LINEAR', invert: false};
v.paintPixels(); v.draw();
const on = ctx.getImageData(0, 0, c.width, c.height).data;
toggle.checked = false; v.draw();
const off = ctx.getImageData(0, 0, c.width, c.height).data;
toggle.checked = true; v.settings = kept; v.paintPixels(); v.draw();
let w = 0, sx = 0, sy = 0;
for (let i = 0; i < on.length; i += 4) {
  const d = Math.abs(on[i] - off[i]) + Math.abs(on[i + 1] - off[i + 1]) + Math.abs(on[i + 2] - off[i + 2]);
  if (d > 60) { const p = i / 4; w += d; sx += d * (p % c.width); sy += d * Math.floor(p / c.width); }
}
return w ? {x: sx / w, y: sy / w} : null;
"""

# Where the stored heat map's hot spot lies in its own picture (alpha-weighted), as fractions.
HEAT_SPOT = """
const img = document.querySelector('figure.viewer img.heatmap');
const t = document.createElement('canvas'); t.width = img.naturalWidth; t.height = img.naturalHeight;
const ctx = t.getContext('2d'); ctx.drawImage(img, 0, 0);
const d = ctx.getImageData(0, 0, t.width, t.height).data;
let w = 0, sx = 0, sy = 0;
for (let i = 3; i < d.length; i += 4) { const a = d[i] > 100 ? d[i] : 0; const p = (i - 3) / 4;
  w += a; sx += a * (p % t.width); sy += a * Math.floor(p / t.width); }
return {fx: (sx / w + 0.5) / t.width, fy: (sy / w + 0.5) / t.height};
"""


def heat_centroid(driver: Any) -> dict[str, float]:
    viewer_state(driver)
    found: dict[str, float] = driver.execute_script(HEAT_CENTROID)
    return found


def slide(driver: Any, slider: Any, value: int) -> None:
    driver.execute_script("arguments[0].value = arguments[1]; "
                          "arguments[0].dispatchEvent(new Event('input'));", slider, value)


def keep_shot(driver: Any, name: str) -> None:
    if os.environ.get("CXRTRIAGE_SCREENSHOT_DIR"):
        driver.save_screenshot(str(Path(os.environ["CXRTRIAGE_SCREENSHOT_DIR"]) / name))


def expected_spot(state: dict[str, Any], spot: dict[str, float]) -> tuple[float, float]:
    rect = state["rect"]
    return rect["x"] + spot["fx"] * rect["w"], rect["y"] + spot["fy"] * rect["h"]


def test_the_viewer_windows_zooms_pans_and_keeps_the_heat_map_in_register(reading_room) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, tmp, flagged = reading_room
    driver = signed_in(base)
    with screenshot_on_failure(driver, tmp / "viewer-failure.png"):
        driver.get(f"{base}/studies/{flagged[0]}?flagged=true")
        figure = driver.find_element(By.CSS_SELECTOR, "figure.viewer")
        WebDriverWait(driver, 60).until(lambda d: figure.get_attribute("data-viewer") == "ready")
        state = viewer_state(driver)
        meta = reader_api(base, reader_api(base, f"/api/studies/{flagged[0]}")["images"][0]["display_url"])
        # The file's own first window, MONOCHROME1 inverted, as the server's preview shows it; the
        # image twice as wide as its 896 columns (0.3 mm apart against 0.15 mm rows).
        assert state["preset"] == "file-0" and (state["center"], state["width"]) == (2050, 3800)
        assert state["invert"] is True and meta["photometric"] == "MONOCHROME1"
        assert state["rect"]["w"] == pytest.approx(2 * state["rect"]["h"], rel=0.01)
        same = driver.execute_script("""
            const v = window.cxrViewers[0], r = v.rect();
            const img = document.querySelector('figure.viewer img.radiograph');
            const t = document.createElement('canvas'); t.width = v.canvas.width; t.height = v.canvas.height;
            const ctx = t.getContext('2d'); ctx.drawImage(img, r.x, r.y, r.w, r.h);
            const a = ctx.getImageData(r.x + 4, r.y + 4, r.w - 8, r.h - 8).data;
            document.getElementById('heatmap-toggle').checked = false; v.draw();
            const b = v.canvas.getContext('2d').getImageData(r.x + 4, r.y + 4, r.w - 8, r.h - 8).data;
            document.getElementById('heatmap-toggle').checked = true; v.draw();
            let diff = 0; for (let i = 0; i < a.length; i += 4) { diff += Math.abs(a[i + 1] - b[i + 1]); }
            return diff / (a.length / 4);""")
        assert same < 6, same  # the canvas paints what the server painted: the same pipeline

        spot = driver.execute_script(HEAT_SPOT)
        found = heat_centroid(driver)
        expected = expected_spot(state, spot)
        assert abs(found["x"] - expected[0]) < 6 and abs(found["y"] - expected[1]) < 6, (found, expected)

        canvas = driver.find_element(By.CSS_SELECTOR, "figure.viewer canvas")
        before = driver.execute_script(CANVAS_STATS)
        (ActionChains(driver).move_to_element(canvas).click_and_hold().move_by_offset(90, 60).release()
         .perform())
        state = viewer_state(driver)
        step = (meta["value_range"]["p99"] - meta["value_range"]["p01"]) / 300
        assert state["preset"] == "custom"
        assert state["width"] == pytest.approx(3800 + 90 * step, rel=0.02)
        assert state["center"] == pytest.approx(2050 + 60 * step, rel=0.02)
        assert abs(driver.execute_script(CANVAS_STATS)["mean"] - before["mean"]) > 3

        keys(driver, "2")  # the second preset: the file's NARROW window
        state = viewer_state(driver)
        assert (state["preset"], state["center"], state["width"]) == ("file-1", 1500, 1600)
        assert driver.find_element(By.CSS_SELECTOR, "select.preset").get_attribute("value") == "file-1"
        keys(driver, "h")
        plain = driver.execute_script(CANVAS_STATS)
        keys(driver, "i")
        state = viewer_state(driver)
        assert state["invert"] is False and state["userInvert"] is True
        inverted = driver.execute_script(CANVAS_STATS)
        assert inverted["mean"] == pytest.approx(255 - plain["mean"], abs=3)
        keys(driver, "i", "h")

        # Zoom about the hot spot, then pan: the map follows the image.
        x, y = expected_spot(viewer_state(driver), spot)
        box = canvas.rect
        origin = ScrollOrigin.from_element(canvas, int(x - box["width"] / 2), int(y - box["height"] / 2))
        ActionChains(driver).scroll_from_origin(origin, 0, -300).perform()
        zoomed = viewer_state(driver)
        assert zoomed["scale"] > 1.4 * state["scale"] and not zoomed["fit"]
        (ActionChains(driver).key_down(Keys.SHIFT).move_to_element(canvas).click_and_hold()
         .move_by_offset(-70, 45).release().key_up(Keys.SHIFT).perform())
        moved = viewer_state(driver)
        assert moved["rect"]["x"] == pytest.approx(zoomed["rect"]["x"] - 70, abs=1.5)
        assert moved["rect"]["y"] == pytest.approx(zoomed["rect"]["y"] + 45, abs=1.5)
        assert moved["center"] == zoomed["center"] and moved["width"] == zoomed["width"]  # panning only
        found, expected = heat_centroid(driver), expected_spot(moved, spot)
        assert abs(found["x"] - expected[0]) < 6 and abs(found["y"] - expected[1]) < 6, (found, expected)

        slider = driver.find_element(By.ID, "heatmap-opacity")
        full = driver.execute_script(CANVAS_STATS)["colour"]
        slide(driver, slider, 40)
        viewer_state(driver)
        assert driver.execute_script(CANVAS_STATS)["colour"] < 0.7 * full

        keys(driver, "z")
        assert viewer_state(driver)["scale"] == 1
        keep_shot(driver, "study-viewer-zoomed.png")
        keys(driver, "r")
        state = viewer_state(driver)
        assert state["fit"] and state["preset"] == "file-0" and state["invert"] is True

        keys(driver, "?")
        assert driver.find_element(By.ID, "keys-help").is_displayed()
        keys(driver, Keys.ESCAPE)
        assert not driver.find_element(By.ID, "keys-help").is_displayed()
        slide(driver, slider, 100)
        keep_shot(driver, "study-viewer.png")


def test_five_flagged_studies_reviewed_with_the_keyboard_only(reading_room) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, tmp, flagged = reading_room
    verdicts = dict(zip(flagged, ["agree", "disagree", "uncertain", "agree", "disagree"], strict=True))
    driver = signed_in(base)
    wait = WebDriverWait(driver, 30)

    def on_study(uid: str) -> bool:  # asked in one script: the page may be changing meanwhile
        return bool(driver.execute_script(
            "const r = document.getElementById('reading-room'); "
            "return r && r.dataset.studyUid === arguments[0] && document.readyState === 'complete';", uid))

    with screenshot_on_failure(driver, tmp / "keyboard-failure.png"):
        driver.get(base + "/?flagged=true&reviewed=false")
        wait.until(lambda d: d.find_elements(By.ID, "worklist"))
        keys(driver, "j", Keys.ENTER)  # the first row, opened
        for number, uid in enumerate(flagged, start=1):
            wait.until(lambda d, uid=uid: on_study(uid))
            assert "flagged=true" in driver.current_url and "reviewed=false" in driver.current_url, number
            position = driver.find_element(By.ID, "case-position").text
            # Those already reviewed have left the list: this one is always its first.
            assert position == f"Case 1 of {len(flagged) - number + 1}", position
            keys(driver, verdicts[uid][0])  # a, d or u: saved, then the next case
        wait.until(lambda d: d.find_element(By.ID, "reading-room").get_attribute("data-finished") == "true")
        assert on_study(flagged[-1]) and driver.find_elements(By.ID, "last-case")
        assert "last case" in driver.find_element(By.ID, "reading-status").text
        for uid, verdict in verdicts.items():
            current = reader_api(base, f"/api/studies/{uid}/feedback")["current"]
            assert [(c["username"], c["verdict"]) for c in current] == [(READER[0], verdict)], uid
        keys(driver, "k")  # back through the list: none is left unreviewed before the last
        keys(driver, "w")
        wait.until(lambda d: d.find_elements(By.ID, "worklist"))
        assert "No studies match" in driver.find_element(By.ID, "worklist").text


def test_the_worklist_counts_new_flagged_studies_without_reloading(reading_room) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.web_seed import register, seed_study

    base, db, tmp, _ = reading_room
    driver = signed_in(base)
    with screenshot_on_failure(driver, tmp / "updates-failure.png"):
        driver.get(base + "/")
        box = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "worklist-updates"))
        driver.execute_script("window.__same_page = true;")
        assert not box.is_displayed()
        with db.session() as session:
            seed_study(session, register(session), [0.97])  # the model flags a new study
        WebDriverWait(driver, 30).until(lambda d: box.is_displayed())
        assert box.text.startswith("1 new flagged study since this page loaded")
        assert driver.execute_script("return window.__same_page") is True  # no reload of its own
        assert driver.title.startswith("(1) ")
        driver.find_element(By.ID, "show-new").click()
        WebDriverWait(driver, 30).until(lambda d: not d.execute_script("return window.__same_page"))
        assert not driver.find_element(By.ID, "worklist-updates").is_displayed()
