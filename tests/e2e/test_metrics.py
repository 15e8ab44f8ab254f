"""Each long-running process serves its own Prometheus metrics: scraped here from a real
`cxrtriage serve` (receiver with its scheduler on the port, the classification worker on the next,
the export worker on the one after) while a study
goes PACS -> receiver -> worker -> SR at dcmtk's storescp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from cxrtriage.dicom.contexts import DX_PRESENTATION
from tests.conftest import assert_no_patient_data
from tests.factory import radiograph, write_study
from tests.peers import echoscu, encode_dataset, send_raw, storescu
from tests.scrape import free_port_pair, samples, scrape, value
from tests.servers import LOOPBACK, Proc, binary, free_port, port_open, wait_for

PREFIXES = ("cxrtriage_receiver_", "cxrtriage_scheduler_", "cxrtriage_worker_")


@pytest.mark.slow
def test_receiver_scheduler_and_worker_metrics(tmp_path: Path, service_factory, tiny_package) -> None:
    scp_port = free_port()
    inbox = tmp_path / "pacs-inbox"
    inbox.mkdir()
    storescp = Proc("storescp", [binary("storescp"), "-aet", "PACS", "-od", str(inbox), "+xa",
                                 str(scp_port)], tmp_path)
    metrics_port = free_port_pair(3)
    service = service_factory({"CXRTRIAGE_MODEL": str(tiny_package), "CXRTRIAGE_HEATMAPS": "false",
                               "CXRTRIAGE_METRICS_PORT": str(metrics_port),
                               "CXRTRIAGE_SR_DESTINATION": f"PACS@{LOOPBACK}:{scp_port}"})
    service.procs.append(storescp)
    wait_for(lambda: port_open(scp_port), 30, "storescp")
    service.start("serve", "serve")
    wait_for(lambda: echoscu(service.port), 60, "receiver C-ECHO", interval=0.5)
    receiver_port, worker_port, exporter_port = metrics_port, metrics_port + 1, metrics_port + 2
    wait_for(lambda: scrape(worker_port), 60, "the worker's metrics endpoint", interval=0.5)

    study_uid = generate_uid()
    assert storescu(service.port, write_study(tmp_path / "s", [radiograph(study_uid),
                                                               radiograph(study_uid)])).returncode == 0
    no_pixels = radiograph()
    del no_pixels.PixelData
    assert send_raw(service.port, encode_dataset(no_pixels), DX_PRESENTATION,
                    str(no_pixels.SOPInstanceUID), tmp_path) == 0xC210

    def sent() -> bool:
        rows = json.loads(service.cli("studies", "--json"))["studies"]
        return any(r["study_uid"] == study_uid and r["sr_state"] == "sent" for r in rows)

    wait_for(sent, 120, "the SR at the PACS", interval=0.5)
    exporter = wait_for(lambda: (t := scrape(exporter_port)) and value(
        t, "cxrtriage_worker_sr_export_attempts_total", outcome="sent") and t, 30, "exporter counters")
    worker = wait_for(lambda: (t := scrape(worker_port)) and value(
        t, "cxrtriage_worker_studies_processed_total", state="done") and t, 30, "worker counters")
    receiver = wait_for(lambda: (t := scrape(receiver_port)) and value(
        t, "cxrtriage_receiver_associations_open") == 0 and value(
        t, "cxrtriage_scheduler_queue_depth", queue="cxrtriage") is not None and t, 30, "receiver gauges")
    assert isinstance(worker, str) and isinstance(receiver, str) and isinstance(exporter, str)
    (tmp_path / "receiver-scrape.txt").write_text(receiver)
    (tmp_path / "worker-scrape.txt").write_text(worker)
    (tmp_path / "exporter-scrape.txt").write_text(exporter)

    assert value(receiver, "cxrtriage_receiver_instances_received_total") == 2
    assert value(receiver, "cxrtriage_receiver_instances_refused_total", status="0xC210") == 1
    assert (value(receiver, "cxrtriage_receiver_associations_total") or 0) >= 3  # echo, store, refused
    assert (value(receiver, "cxrtriage_receiver_storage_free_bytes") or 0) > 0
    assert (value(receiver, "cxrtriage_scheduler_dispatched_total", kind="study") or 0) >= 1
    # the worker dispatched the SR as soon as it was recorded; the scheduler only retries
    assert value(receiver, "cxrtriage_scheduler_dispatched_total", kind="export") is not None
    assert value(receiver, "cxrtriage_scheduler_exports_pending") is not None
    assert value(receiver, "cxrtriage_scheduler_studies_waiting", state="queued") is not None

    assert value(worker, "cxrtriage_worker_images_classified_total", model="test-random-resnet18",
                 version="0.0.0-test") == 2
    assert value(worker, "cxrtriage_worker_studies_processed_total", state="done") == 1
    assert value(worker, "cxrtriage_worker_processing_seconds_count") == 1
    assert value(worker, "cxrtriage_worker_result_latency_seconds_count") == 1
    assert (value(worker, "cxrtriage_worker_storage_free_bytes") or 0) > 0
    # SRs go out on the export worker, so a PACS outage never holds up classification.
    assert value(exporter, "cxrtriage_worker_sr_latency_seconds_count") == 1
    assert value(exporter, "cxrtriage_worker_sr_export_attempts_total", outcome="sent") == 1

    for text in (receiver, worker, exporter):
        assert_no_patient_data(text, "a metrics scrape")
        names = {name for name, _ in samples(text)}
        ours = {n for n in names if n.startswith("cxrtriage_")}
        assert ours and all(n.startswith(PREFIXES) for n in ours)
        labels = {v for _, pairs in samples(text) for _, v in pairs}
        assert not any(v.startswith("1.2.") or v == study_uid for v in labels), "a UID in a label"
    service.stop()
    service.check_logs()
