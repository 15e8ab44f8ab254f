"""Worklist page load time with 10,000 studies in the database (seeded through the db/
functions the receiver and worker use), served by uvicorn and fetched over loopback HTTP the
way a browser would, signed in with a session cookie.

Run: .venv/bin/python -m benchmarks.web   (BENCH_WEB_STUDIES to change the count; part of make benchmark)
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from datetime import timedelta
from http.cookiejar import CookieJar
from pathlib import Path

from tests.servers import LOOPBACK, free_port, wait_for
from tests.web_seed import register, seed_study

from cxrtriage.config import Settings
from cxrtriage.db.accounts import add_user
from cxrtriage.db.models import utcnow
from cxrtriage.db.session import Database, upgrade
from cxrtriage.domain import Reason

PASSWORD = "benchmark password"


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


def sign_in(base: str) -> urllib.request.OpenerDirector:
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    form = opener.open(base + "/login").read().decode()
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    body = urllib.parse.urlencode({"username": "bench", "password": PASSWORD, "csrf_token": token}).encode()
    opener.open(base + "/login", data=body).read()
    return opener


def timed(opener: urllib.request.OpenerDirector, url: str, rounds: int) -> dict[str, float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        with opener.open(url) as response:
            body = response.read()
            assert response.status == 200 and len(body) > 100
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}


PAGES = {  # report key: (what, path, rounds)
    "worklist_page1": ("worklist page 1 (HTML)", "/", 20),
    "worklist_page100": ("worklist page 100 (HTML)", "/?page=100", 10),
    "worklist_flagged_unreviewed": ("worklist flagged, unreviewed (HTML)",
                                    "/?flagged=true&reviewed=false", 10),
    "api_worklist": ("/api/worklist page 1 (JSON)", "/api/worklist", 20),
    "api_stats": ("/api/stats", "/api/stats", 5),
    "metrics": ("/metrics", "/metrics", 5),
    "dashboard": ("dashboard (HTML, plots drawn)", "/dashboard", 3),
}


def measure(count: int) -> tuple[float, dict[str, dict[str, float]]]:
    """Seconds to seed `count` studies, and each page's median and max load time, keyed as PAGES."""
    import uvicorn

    from cxrtriage.web.app import create_app

    with tempfile.TemporaryDirectory(prefix="cxrtriage-webbench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        db = Database(url)
        seconds = seed(db, count)
        port = free_port()
        settings = Settings(database_url=url, web_port=port, log_level="WARNING")
        server = uvicorn.Server(uvicorn.Config(create_app(settings, db), host=LOOPBACK, port=port,
                                               log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        base = f"http://{LOOPBACK}:{port}"
        wait_for(lambda: urllib.request.urlopen(base + "/healthz").status == 200, 30, "the review app")
        try:
            opener = sign_in(base)
            opener.open(base + "/").read()  # warm-up: fills nothing (details seeded), compiles templates
            results = {key: timed(opener, base + path, rounds) for key, (_, path, rounds) in PAGES.items()}
        finally:
            server.should_exit = True
            thread.join(timeout=10)
        db.engine.dispose()
    return seconds, results


def main() -> None:
    count = int(os.environ.get("BENCH_WEB_STUDIES", "10000"))
    seconds, results = measure(count)
    print(f"seeded {count} studies through db/ functions in {seconds:.1f} s")
    print(f"\nReview app with {count} studies (SQLite, 50 rows a page, loopback HTTP):")
    for key, numbers in results.items():
        print(f"  {PAGES[key][0]:40s} median {numbers['median_ms']:8.1f} ms   "
              f"max {numbers['max_ms']:8.1f} ms")
    print(json.dumps({"studies": count, "seed_s": round(seconds, 1), **results}))


if __name__ == "__main__":
    main()
