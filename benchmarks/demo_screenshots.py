"""Screenshots of the dashboard with months of made-up history: two model versions, a drift in
the newer one's scores, feedback and not-analysed studies. Seeded through the db/ functions, shown
by the real app in headless Chromium. Writes docs/screenshots/dashboard-demo.png and
worklist-demo.png.

Run: .venv/bin/python -m benchmarks.demo_screenshots
"""

from __future__ import annotations

import random
import tempfile
import threading
import urllib.request
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update
from tests.servers import LOOPBACK, free_port, wait_for
from tests.web_seed import register, seed_study

from cxrtriage.config import Settings
from cxrtriage.db.accounts import add_user
from cxrtriage.db.models import Feedback, InferenceResult, Instance, Study, User, utcnow
from cxrtriage.db.session import Database, upgrade

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "screenshots"
PASSWORD = "demo password"
NAMES = ["DOE^JANE", "ROE^RICHARD", "MOUSTERMAN^MAX", "SMITH^ANNA", "NGUYEN^LINH", "GARCIA^LUIS"]


def seed(db: Database) -> None:
    rng = random.Random(3)
    now = utcnow()
    with db.session() as session:
        for name in ("dr.grey", "dr.yang"):
            add_user(session, name, PASSWORD, "radiologist")
        users = {u.username: u.id for u in session.scalars(select(User)).all()}
        old, new = register(session, "1.0.0", threshold=0.35), register(session, "1.1.0", threshold=0.3)
        for day in range(84, -1, -1):
            version = old if day > 28 else new
            drift = 0.0 if day > 14 else 0.8  # the newer version's scores creep up in its third week
            for _ in range(rng.randint(6, 12)):
                received = now - timedelta(days=day, minutes=rng.uniform(0, 600))
                number = rng.randint(0, 10**6)
                details = {"patient_name": rng.choice(NAMES), "patient_id": f"P{number:07d}",
                           "accession_number": f"A{number:08d}", "study_date": received.strftime("%Y%m%d"),
                           "study_description": "XR CHEST PA"}
                if rng.random() < 0.07:
                    uid = seed_study(session, version, None, received_at=received, details=details,
                                     reason=rng.choice(["no frontal chest radiograph: lateral view",
                                                        "not a chest radiograph: body part ABDOMEN"]))
                else:
                    score = min(0.999, rng.betavariate(0.7 + drift, 3.0))
                    threshold = 0.35 if version == old else 0.3
                    uid = seed_study(session, version, [score], threshold=threshold, received_at=received,
                                     details=details)
                study = session.scalar(select(Study).where(Study.study_uid == uid))
                assert study is not None
                result_at = received + timedelta(minutes=rng.uniform(0.3, 2.0))
                session.execute(update(InferenceResult).where(InferenceResult.instance_id.in_(
                    select(Instance.id).where(Instance.study_id == study.id))).values(created_at=result_at))
                if study.flagged is not None and day > 0 and rng.random() < 0.6:
                    positive = rng.random() < (0.8 if study.flagged else 0.1)
                    verdict = "agree" if positive == bool(study.flagged) else "disagree"
                    if rng.random() < 0.08:
                        verdict = "uncertain"
                    at = result_at + timedelta(minutes=rng.uniform(5, 240))
                    session.add(Feedback(study_id=study.id, model_version_id=version,
                                         user_id=users[rng.choice(list(users))], verdict=verdict,
                                         flagged=bool(study.flagged), created_at=at, updated_at=at))


def main() -> None:
    import uvicorn
    from selenium.webdriver.common.by import By
    from tests.e2e.test_web_browser import browser

    from cxrtriage.web.app import create_app

    with tempfile.TemporaryDirectory(prefix="cxrtriage-demo-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'demo.db'}"
        upgrade(url)
        db = Database(url)
        seed(db)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(Settings(database_url=url), db), host=LOOPBACK,
                                               port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        base = f"http://{LOOPBACK}:{port}"
        wait_for(lambda: urllib.request.urlopen(base + "/healthz").status == 200, 30, "the review app")
        driver = browser()
        try:
            driver.get(base + "/login")
            driver.find_element(By.ID, "username").send_keys("dr.grey")
            driver.find_element(By.ID, "password").send_keys(PASSWORD)
            driver.find_element(By.ID, "sign-in").click()
            driver.find_element(By.ID, "worklist")
            driver.save_screenshot(str(OUT / "worklist-demo.png"))
            driver.set_window_size(1700, 1700)
            driver.get(base + "/dashboard")
            driver.find_element(By.ID, "stats")
            driver.save_screenshot(str(OUT / "dashboard-demo.png"))
        finally:
            driver.quit()
            server.should_exit = True
            thread.join(timeout=10)
        db.engine.dispose()
    print(f"screenshots written to {OUT}")


if __name__ == "__main__":
    main()
