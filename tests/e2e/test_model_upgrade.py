"""The model upgrade procedure of docs/operations.md ("Upgrading the model"), step by step: serve
version 1, install a new package, point CXRTRIAGE_MODEL at it, restart, `cxrtriage reprocess
--dry-run`, reprocess (a chosen study first, then the rest, with the progress bar), and keep old and
new results side by side; `cxrtriage models` shows both versions with their thresholds and studies
read."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from cxrtriage.db.models import InferenceResult, Instance, ModelVersion
from cxrtriage.db.session import Database
from tests.conftest import assert_no_patient_data
from tests.factory import radiograph, random_package, write_study
from tests.peers import echoscu, storescu
from tests.servers import wait_for


def _studies(service) -> dict[str, dict]:  # type: ignore[no-untyped-def, type-arg]
    return {r["study_uid"]: r for r in json.loads(service.cli("studies", "--json"))["studies"]}


def _models(service) -> dict[str, dict]:  # type: ignore[no-untyped-def, type-arg]
    return {m["version"]: m for m in json.loads(service.cli("models", "--json"))["models"]}


def _new_version(folder: Path, version: str, threshold: float) -> Path:
    package = random_package(folder, seed=7)
    manifest = json.loads((package / "manifest.json").read_text())
    manifest.update(version=version, threshold=threshold)
    (package / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return package


@pytest.mark.slow
def test_model_upgrade_procedure(tmp_path: Path, service_factory, tiny_package) -> None:
    service = service_factory({"CXRTRIAGE_MODEL": str(tiny_package), "CXRTRIAGE_HEATMAPS": "false",
                               "CXRTRIAGE_REPROCESS_RATE_PER_SECOND": "20"})
    service.start("serve-v1", "serve")
    wait_for(lambda: echoscu(service.port), 60, "receiver C-ECHO", interval=0.5)
    uids = [generate_uid() for _ in range(3)]
    files = [f for uid in uids for f in write_study(tmp_path / uid, [radiograph(uid)])]
    assert storescu(service.port, files).returncode == 0
    first = wait_for(lambda: (rows := _studies(service)) and all(
        rows.get(u, {}).get("state") == "done" for u in uids) and rows, 90, "version 1 results")
    service.stop()

    service.env["CXRTRIAGE_MODEL"] = str(_new_version(tmp_path / "v2", "0.0.2-test", 0.3))
    service.start("serve-v2", "serve")
    wait_for(lambda: echoscu(service.port), 60, "receiver C-ECHO", interval=0.5)
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    dry = {
        (): 3, ("--study", uids[0]): 1, ("--state", "skipped,failed"): 0, ("--since", tomorrow): 0,
        ("--until", date.today().isoformat()): 3, ("--not-read-by", "0.0.0-test"): 0, ("--limit", "2"): 2,
    }
    for args, expected in dry.items():
        out = service.cli("reprocess", "--dry-run", *args)
        assert out.startswith(f"{expected} studies would be queued"), (args, out)
    models = _models(service)
    assert models["0.0.0-test"]["studies_read"] == 3 and models["0.0.2-test"]["studies_read"] == 0
    assert models["0.0.2-test"]["threshold"] == 0.3 and models["0.0.2-test"]["serving"]

    assert "1 studies queued" in service.cli("reprocess", "--study", uids[0])
    wait_for(lambda: _studies(service)[uids[0]]["sr_uid"] != first[uids[0]]["sr_uid"], 60, "study 1 again")
    # The rest in a terminal, as an operator runs it: the progress bar goes to the terminal.
    command = shlex.join([sys.executable, "-m", "cxrtriage.cli", "reprocess"])
    tty = subprocess.run(["script", "-qec", command, "/dev/null"], cwd=service.workdir, timeout=120,
                         env={**os.environ, **service.env}, capture_output=True, text=True)
    assert tty.returncode == 0, tty.stdout[-2000:]
    assert "2 studies queued" in tty.stdout and "reprocessing: 100%" in tty.stdout, tty.stdout[-2000:]
    assert_no_patient_data(tty.stdout, "the reprocess progress output")
    after = wait_for(lambda: (rows := _studies(service)) and all(
        rows[u]["state"] == "done" and rows[u]["sr_uid"] != first[u]["sr_uid"] for u in uids) and rows,
        90, "version 2 results")
    assert service.cli("reprocess", "--dry-run").startswith("0 studies"), "all read by version 2"

    models = _models(service)
    assert (models["0.0.0-test"]["studies_read"], models["0.0.0-test"]["current_result_of"]) == (3, 0)
    assert (models["0.0.2-test"]["studies_read"], models["0.0.2-test"]["current_result_of"]) == (3, 3)
    db = Database(f"sqlite:///{service.workdir / 'var' / 'cxrtriage.db'}")
    with db.session() as session:  # old and new results side by side, per image
        rows = session.execute(select(Instance.sop_instance_uid, ModelVersion.version).join(
            InferenceResult, InferenceResult.instance_id == Instance.id).join(
            ModelVersion, ModelVersion.id == InferenceResult.model_version_id)).all()
    per_image: dict[str, set[str]] = {}
    for sop, version in rows:
        per_image.setdefault(sop, set()).add(version)
    assert len(per_image) == 3 and all(v == {"0.0.0-test", "0.0.2-test"} for v in per_image.values())
    for uid in uids:  # the new threshold is the one the current result used
        assert {r["threshold"] for r in after[uid]["image_results"].values()} == {0.3}  # type: ignore[index]
    table = service.cli("models")
    assert "0.0.2-test" in table and "0.0.0-test" in table
    service.stop()
    service.check_logs()
