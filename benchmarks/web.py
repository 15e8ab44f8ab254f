"""The review app with 10,000 studies in the database (seeded through the db/ functions the
receiver and worker use), run as `cxrtriage web` in a process of its own and fetched over
loopback HTTP the way a browser would, signed in with a session cookie:

- page times: the worklist (goal: page 1 in at most 300 ms), a study page (with its place in the
  worklist), the API, the dashboard, /metrics;
- first paint of a 3000 x 2500, 12-bit radiograph freshly stored (never served before, so no
  cache helps): the server's preview PNG, which the study page paints first, and the viewer's
  data that then replaces it (display metadata and pixel values, fetched at once as the page
  does); each beside the same request for a 224 x 224 image (goal: the large preview in at most
  1 s on this machine);
- the web process's resident memory (VmRSS, and its peak VmHWM, from /proc) after serving all of
  it (goal: under 200 MB); its decoder children are counted apart.

Run: .venv/bin/python -m benchmarks.web   (BENCH_WEB_STUDIES to change the count; part of make benchmark)
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http.cookiejar import CookieJar
from pathlib import Path

from tests.servers import LOOPBACK, free_port, wait_for
from tests.web_seed import register, seed_study, stored_image

from cxrtriage.db.accounts import add_user
from cxrtriage.db.models import utcnow
from cxrtriage.db.session import Database, upgrade
from cxrtriage.domain import Reason

PASSWORD = "benchmark password"
LARGE = (3000, 2500)  # rows, columns of the first-paint image
LARGE_ROUNDS = 5  # each round a file of its own: nothing served before
SMALL_ROUNDS = 5


def seed(db: Database, count: int) -> float:
    rng = random.Random(7)
    start = time.perf_counter()
    now = utcnow()
    with db.session() as session:
        add_user(session, "bench", PASSWORD, "radiologist")
        versions = [register(session, "1.0.0"), register(session, "1.1.0")]
    done = 0
    while done < count:
        with db.session() as session:
            for _ in range(min(500, count - done)):
                version = versions[0] if done < count * 0.7 else versions[1]
                kind = rng.random()
                received = now - timedelta(minutes=rng.uniform(0, 60 * 24 * 60))
                details = {"patient_name": f"BENCH^PATIENT{done}", "patient_id": f"ID{done:06d}",
                           "accession_number": f"ACC{done:06d}", "study_date": "20260101",
                           "study_description": "XR CHEST AP"}
                if kind < 0.05:
                    seed_study(session, version, [rng.random()], finished=False, details=details)
                elif kind < 0.15:
                    seed_study(session, version, None, reason=Reason.NO_FRONTAL_CHEST_IMAGE,
                               received_at=received, details=details)
                else:
                    images = [rng.betavariate(0.6, 2.5) for _ in range(rng.choice((1, 1, 2)))]
                    seed_study(session, version, images, received_at=received, details=details)
                done += 1
    return time.perf_counter() - start


def large_radiograph(folder: Path, index: int) -> Path:
    """A 3000 x 2500 radiograph, 12 bits stored in 16 (a sample enlarged, with detector noise),
    0.139 mm pixels, a window of its own; each file different, so no cache can serve it."""
    import numpy as np
    import pydicom
    from PIL import Image
    from tests.factory import sample_pixels

    from cxrtriage.dicom.wrap import wrap_image

    picture = Image.fromarray(sample_pixels("pneumonia-1"))
    picture = picture.resize((LARGE[1], LARGE[0]), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(index).integers(0, 16, LARGE)
    pixels = ((np.asarray(picture).astype(np.uint16) << 4) + noise).astype(np.uint16)
    ds = wrap_image(pixels, bits_stored=12, PixelSpacing=[0.139, 0.139], WindowCenter=2048, WindowWidth=4096)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"large-{index}.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def image_studies(db: Database, folder: Path) -> dict[str, list[str]]:
    """Studies of one image each, for the first-paint rounds: each study's image URL base."""
    out: dict[str, list[str]] = {"large": [], "small": []}
    with db.session() as session:
        version = register(session, "bench-images")
        for kind, rounds in (("large", LARGE_ROUNDS), ("small", SMALL_ROUNDS)):
            for index in range(rounds):
                path = large_radiograph(folder, index) if kind == "large" else stored_image(folder / "small")
                uid = seed_study(session, version, [0.9], paths=[str(path)])
                out[kind].append(uid)
    return out


def sign_in(base: str) -> urllib.request.OpenerDirector:
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    form = opener.open(base + "/login").read().decode()
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    body = urllib.parse.urlencode({"username": "bench", "password": PASSWORD, "csrf_token": token}).encode()
    opener.open(base + "/login", data=body).read()
    return opener


def fetch(opener: urllib.request.OpenerDirector, url: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    with opener.open(url) as response:
        body = response.read()
        assert response.status == 200 and len(body) > 40, url
    return (time.perf_counter() - start) * 1000, body


def timed(opener: urllib.request.OpenerDirector, url: str, rounds: int) -> dict[str, float]:
    times = [fetch(opener, url)[0] for _ in range(rounds)]
    return {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}


PAGES = {  # report key: (what, path, rounds); {study} is a flagged study's UID
    "worklist_page1": ("worklist page 1 (HTML)", "/", 20),
    "worklist_page100": ("worklist page 100 (HTML)", "/?page=100", 10),
    "worklist_flagged_unreviewed": ("worklist flagged, unreviewed (HTML)",
                                    "/?flagged=true&reviewed=false", 10),
    "study_page": ("study page, flagged unreviewed list (HTML)",
                   "/studies/{study}?flagged=true&reviewed=false", 10),
    "api_worklist": ("/api/worklist page 1 (JSON)", "/api/worklist", 20),
    "worklist_updates": ("/api/worklist/updates (the page's poll)",
                         "/api/worklist/updates?since={since}", 20),
    "api_stats": ("/api/stats", "/api/stats", 5),
    "metrics": ("/metrics", "/metrics", 5),
    "dashboard": ("dashboard (HTML, plots drawn)", "/dashboard", 3),
}


def first_paint(opener: urllib.request.OpenerDirector, base: str, studies: list[str]) -> dict[str, float]:
    """Per study (each image served for the first time): the preview PNG, then the viewer's two
    requests at once (as static/viewer.js makes them); medians in ms, and the pixel body's size."""
    previews, viewers, sizes = [], [], []
    for uid in studies:
        image = json.loads(fetch(opener, f"{base}/api/studies/{uid}")[1])["images"][0]
        previews.append(fetch(opener, base + image["image_url"])[0])
        start = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            meta, pixels = pool.map(lambda url: fetch(opener, base + url), [image["display_url"],
                                                                           image["pixels_url"]])
        viewers.append((time.perf_counter() - start) * 1000)
        sizes.append(len(pixels[1]))
        assert json.loads(meta[1])["pixels"]["bytes"] == len(pixels[1])
    return {"preview_ms": round(statistics.median(previews), 1),
            "preview_max_ms": round(max(previews), 1),
            "viewer_data_ms": round(statistics.median(viewers), 1),
            "viewer_data_max_ms": round(max(viewers), 1),
            "pixel_bytes": float(statistics.median(sizes))}


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the decoder children of the web process)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if _status_kb(int(entry.name), "PPid") == pid:
                    found.append(int(entry.name))
            except OSError:
                pass  # it ended meanwhile
    return found


def measure(count: int) -> tuple[float, dict[str, dict[str, float]], dict[str, float]]:
    """Seconds to seed `count` studies; each page's median and max load time, keyed as PAGES; and
    the first-paint and memory figures."""
    with tempfile.TemporaryDirectory(prefix="cxrtriage-webbench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        db = Database(url)
        seconds = seed(db, count)
        studies = image_studies(db, Path(tmp) / "images")
        db.engine.dispose()
        port = free_port()
        env = {**os.environ, "CXRTRIAGE_DATABASE_URL": url, "CXRTRIAGE_WEB_HOST": LOOPBACK,
               "CXRTRIAGE_WEB_PORT": str(port), "CXRTRIAGE_LOG_LEVEL": "WARNING",
               "CXRTRIAGE_STORAGE_DIR": str(Path(tmp) / "storage"),
               "CXRTRIAGE_BROKER_DIR": str(Path(tmp) / "broker")}
        log = open(Path(tmp) / "web.log", "wb")  # noqa: SIM115 - closed below
        web = subprocess.Popen([sys.executable, "-m", "cxrtriage.cli", "web"], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
        base = f"http://{LOOPBACK}:{port}"
        try:
            wait_for(lambda: urllib.request.urlopen(base + "/healthz").status == 200, 60, "the review app")
            opener = sign_in(base)
            opener.open(base + "/").read()  # warm-up: compiles templates
            flagged = json.loads(fetch(opener, base + "/api/worklist?flagged=true&reviewed=false")[1])
            since = urllib.parse.quote(utcnow().isoformat())
            study = flagged[0]["study_uid"]
            results = {key: timed(opener, base + path.format(study=study, since=since), rounds)
                       for key, (_, path, rounds) in PAGES.items()}
            large = first_paint(opener, base, studies["large"])
            small = first_paint(opener, base, studies["small"])
            extra = {f"large_{k}": v for k, v in large.items()} | {f"small_{k}": v for k, v in small.items()}
            extra["rss_mb"] = round(_status_kb(web.pid, "VmRSS") / 1024, 1)
            extra["peak_rss_mb"] = round(_status_kb(web.pid, "VmHWM") / 1024, 1)
            extra["decoder_children_rss_mb"] = round(
                sum(_status_kb(child, "VmRSS") for child in _children(web.pid)) / 1024, 1)
        finally:
            web.terminate()
            try:
                web.wait(timeout=20)
            except subprocess.TimeoutExpired:
                web.kill()
                web.wait()
            log.close()
    return seconds, results, extra


def main() -> None:
    count = int(os.environ.get("BENCH_WEB_STUDIES", "10000"))
    seconds, results, extra = measure(count)
    print(f"seeded {count} studies through db/ functions in {seconds:.1f} s")
    print(f"\nReview app with {count} studies (SQLite, 50 rows a page, loopback HTTP, `cxrtriage web`):")
    for key, numbers in results.items():
        print(f"  {PAGES[key][0]:45s} median {numbers['median_ms']:8.1f} ms   "
              f"max {numbers['max_ms']:8.1f} ms")
    print(f"\nFirst paint, {LARGE[0]} x {LARGE[1]} 12-bit against 224 x 224, "
          "each image served for the first time:")
    for what in ("preview", "viewer_data"):
        ratio = extra[f"large_{what}_ms"] / max(extra[f"small_{what}_ms"], 1e-3)
        print(f"  {what:12s} {extra[f'large_{what}_ms']:8.1f} ms against {extra[f'small_{what}_ms']:6.1f} ms "
              f"(x{ratio:.1f})")
    print(f"  pixel body {extra['large_pixel_bytes'] / 1e6:.1f} MB against "
          f"{extra['small_pixel_bytes'] / 1e3:.0f} kB")
    print(f"\nweb process: VmRSS {extra['rss_mb']} MB (peak {extra['peak_rss_mb']} MB); "
          f"decoder children {extra['decoder_children_rss_mb']} MB")
    print(json.dumps({"studies": count, "seed_s": round(seconds, 1), **results, **extra}))


if __name__ == "__main__":
    main()
