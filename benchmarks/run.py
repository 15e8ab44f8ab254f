"""All benchmarks, one command: `make benchmark` (or `python -m benchmarks.run`).

Prints one `key value` line per figure in a fixed order, comment lines starting with `#`, and at
the end every figure again as `BENCHMARK_JSON {...}` on one line (see benchmarks/report.py).
Every measurement is printed beside a ratio to a reference measured in the same run:

- floor: `cxrtriage predict --json` over the generated studies (1024 px DX, one third each
  explicit VR little endian, RLE lossless and JPEG 2000 lossless; every third study has two
  images), images/s with start-up excluded (two runs of different sizes, the difference; see
  benchmarks/floor.py). Reference: the bare model at batch 1 (`model_inference_b1_images_per_s`).
- pipeline: the same files uploaded to Orthanc, then pushed by Orthanc (one asynchronous
  `/modalities/cxrtriage/store` job per study) to `cxrtriage serve` with heatmaps on (default)
  and its SR destination that Orthanc; from the first push to the last study's SR found at
  Orthanc. Study quiet time BENCH_QUIET_SECONDS (1 s), nothing subtracted. Reference: the floor,
  measured before and after the pipeline (the mean). Also CPU seconds per image of all processes
  under `serve` against the floor's (`pipeline_to_floor_cpu_ratio`, floor/pipeline). Both ratios
  swing when other work shares the machine (torch's threads spin and lose the most), so take
  them from an idle machine: `bench_load_avg_1min_start` and a warning line say when it was not.
- latency: one-image studies sent one at a time with storescu to the same `serve`; from
  storescu's return to the SR found at Orthanc (polled every 20 ms), minus the quiet time.
  Reference: one image's share of the floor (1 / floor images/s).
- ingest: instances/s of storescp, Orthanc and `cxrtriage receiver`, one association and four
  parallel ones. Reference: Orthanc (and storescp).
- rss: peak RSS (VmHWM) of every process under `cxrtriage serve` after the latency run, named
  from their command lines. Reference: the `predict` process of the floor.
- decoders: ms per image for each installed pydicom plugin of each compressed syntax, and its
  agreement (benchmarks/decoders.py). Reference: the fastest plugin for that syntax.
- model: training and inference images/s (benchmarks/model.py). Reference: torchvision ResNet-18.
- reprocess (with CUDA, or BENCH_REPROCESS=1): `cxrtriage reprocess --include-read` of the
  pipeline's studies, unpaced, until none is queued or processing; GPU busy % from nvidia-smi.
  Reference: the floor on the same device, and the bare model at batch 64.
- live: a bulk reprocessing run (BENCH_LIVE_BULK studies, unpaced) with one live study sent
  every BENCH_LIVE_INTERVAL s from half-way: live SR latency past the quiet time, and the bulk
  rate before and while live studies arrive (benchmarks/live_first.py). Reference: the live
  latency on the idle service, the bulk rate before live traffic, and the floor.
- web: review app page times with BENCH_WEB_STUDIES studies, first paint of a 3000 x 2500 image
  (the preview PNG, then the viewer's values) against a 224 x 224 one, and the web process's
  resident memory after all of it (benchmarks/web.py).
- hostile: what each attack costs the receiver (benchmarks/hostile.py), the decoder children
  (benchmarks/hostile_pixels.py) and the review app (benchmarks/hostile_web.py), each beside an
  honest sender or browser. Reference: that honest client on the idle server, and an honest image.

Settings: the model is the one the pipeline would serve (CXRTRIAGE_MODEL, else the bundled
package); everything else is the embedded default (SQLite, filesystem broker, default sweep).

Knobs (environment variables), defaults sized for about 13 minutes on a 2-core machine:
  BENCH_STUDIES=90          studies for the floor and the pipeline (120 images)
  BENCH_LATENCY_STUDIES=10  one-image studies for latency
  BENCH_INGEST_FILES=40     instances per ingest round (two rounds per server: 1 and 4 associations)
  BENCH_QUIET_SECONDS=1     CXRTRIAGE_STUDY_QUIET_SECONDS for the pipeline and latency
  BENCH_WEB_STUDIES=10000   studies seeded for the review app; 0 skips it
  BENCH_REPROCESS=auto      1 or 0 forces bulk reprocessing on or off (auto: only with CUDA)
  BENCH_LIVE_BULK=60        live: studies reprocessed in bulk, at least 16 (about 3 minutes on 2 cores)
  BENCH_LIVE_INTERVAL=3     live: seconds between live studies during the bulk run
  BENCH_LIVE_IDLE=3         live: studies sent on the idle service first, for the reference
  BENCH_ONLY=...            comma list of parts to run (floor,pipeline,live,ingest,decoders,model,
                            web,hostile,route); default all
  BENCH_KEEP=1              keep the work folder (server logs, files) and print where it is
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pydicom
import torch
from pydicom.uid import ExplicitVRLittleEndian

from benchmarks import (
    corpus,
    decoders,
    floor,
    hostile,
    hostile_pixels,
    hostile_web,
    ingest,
    instance_route,
    live_first,
    model,
    pipeline,
    web,
)
from benchmarks.report import GpuSampler, Report, median, percentile
from cxrtriage.config import load_settings
from cxrtriage.models.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]
PARTS = ("floor", "pipeline", "live", "ingest", "decoders", "model", "web", "hostile", "route")


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def _commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def main() -> None:  # noqa: C901 - one straight sequence of parts, in report order
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    only = {p.strip() for p in os.environ.get("BENCH_ONLY", ",".join(PARTS)).split(",") if p.strip()}
    studies_n = _int("BENCH_STUDIES", 90)
    latency_n = _int("BENCH_LATENCY_STUDIES", 10)
    ingest_n = _int("BENCH_INGEST_FILES", 40)
    quiet = float(os.environ.get("BENCH_QUIET_SECONDS", "1"))
    web_n = _int("BENCH_WEB_STUDIES", 10000)
    cuda = torch.cuda.is_available()
    reprocess_on = {"1": True, "0": False}.get(os.environ.get("BENCH_REPROCESS", "auto"), cuda)
    package = load_settings().model
    manifest = read_manifest(package)

    report = Report()
    report.note(f"cxr-triage benchmark {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    report.add("bench_commit", _commit())
    report.add("bench_cpus", os.cpu_count())
    report.add("bench_device", f"cuda:{torch.cuda.get_device_name(0)}" if cuda else "cpu")
    report.add("bench_python", platform.python_version())
    report.add("bench_model", f"{manifest.name} {manifest.version}")
    report.add("bench_load_avg_1min_start", os.getloadavg()[0])
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        report.note("WARNING: the machine is busy. The floor (torch's threads) suffers more from other work "
                    "than the pipeline does, so the ratios to the floor are not to be trusted; run again "
                    "on an idle machine")
    work = Path(tempfile.mkdtemp(prefix="cxrtriage-bench-"))
    started = time.perf_counter()
    try:
        studies = corpus.make_studies(work / "corpus", studies_n if {"floor", "pipeline"} & only else 0)
        paths = corpus.all_paths(studies)
        report.note(f"corpus: {len(studies)} studies, {len(paths)} images of 1024x1024 16-bit DX, "
                    f"{sum(p.stat().st_size for p in paths) / 1e6:.0f} MB; syntaxes "
                    + ", ".join(corpus.SHORT[s] for s in corpus.SYNTAXES))
        figures: dict[str, float] = {}

        if "floor" in only:
            report.note("floor: cxrtriage predict --json, start-up excluded (difference of two runs)")
            sampler = GpuSampler(enabled=cuda)
            with sampler:
                result = floor.measure(paths)
            figures["floor"] = result.images_per_s
            report.add("floor_images", result.large.images)
            report.add("floor_images_per_s", result.images_per_s)
            report.add("floor_startup_s", result.startup_s)
            report.add("floor_cpu_s_per_image", result.cpu_s_per_image, 3)
            figures["floor_cpu"] = result.cpu_s_per_image
            report.add("floor_flagged_images", result.flagged)
            report.add("floor_predict_peak_rss_mb", result.large.peak_rss_mb, 0)
            figures["predict_rss"] = result.large.peak_rss_mb
            if cuda:
                report.add("floor_gpu_busy_percent", sampler.busy_percent, 1)

        if "pipeline" in only:
            _pipeline(report, work, studies, latency_n, quiet, reprocess_on, cuda, figures)
            if "floor" in only:  # again, so that a busy spell on the machine shows as a gap
                report.note("floor again, after the pipeline; the ratios use the mean of both")
                again = floor.measure(paths)
                report.add("floor_after_images_per_s", again.images_per_s)
                report.add("floor_after_cpu_s_per_image", again.cpu_s_per_image, 3)
                figures["floor_cpu"] = (figures["floor_cpu"] + again.cpu_s_per_image) / 2
                figures["floor"] = (figures["floor"] + again.images_per_s) / 2
                report.add("floor_mean_images_per_s", figures["floor"])
            floor_image_s = 1 / figures["floor"] if figures.get("floor") else None
            report.ratio("pipeline_to_floor_ratio", figures["pipeline"], figures.get("floor"))
            report.ratio("pipeline_to_floor_cpu_ratio", figures.get("floor_cpu"), figures["pipeline_cpu"])
            report.ratio("latency_p50_to_floor_image_ratio", figures["latency_p50"], floor_image_s)
            if "reprocess" in figures:
                report.ratio("reprocess_to_floor_ratio", figures["reprocess"], figures.get("floor"))

        if "live" in only:
            live_first.run(report, work / "live", quiet, cuda, figures.get("floor"))

        if "ingest" in only:
            _ingest(report, work, ingest_n)

        if "decoders" in only:
            report.note("decoders: ms per 1024 x 1024 image per installed pydicom plugin; max difference "
                        "from the original (lossless) or the fastest plugin (lossy, tolerance "
                        f"{decoders.LOSSY_TOLERANCE}); the plugin cxrtriage uses is marked _chosen 1")
            for row in decoders.measure():
                key = f"decoder_{row.syntax.lower()}_{row.plugin.lower()}"
                report.add(f"{key}_ms", row.ms, 1)
                report.add(f"{key}_max_diff", row.max_diff)
                report.add(f"{key}_ratio_to_fastest", row.ratio_to_fastest)
                report.add(f"{key}_chosen", int(row.chosen))

        if "model" in only:
            report.note(f"model: {manifest.name} on {'cuda' if cuda else 'cpu'}; reference torchvision "
                        "resnet18 at 224 px RGB, same device")
            numbers = model.measure(package)
            for key, value in numbers.items():
                report.add(key, value, 1)
            for key, value in numbers.items():
                if key.endswith("_images_per_s") and "reference" not in key:
                    ref = key.replace("_images_per_s", "_reference_images_per_s")
                    report.ratio(key.replace("_images_per_s", "_to_reference_ratio"), value, numbers[ref])
            report.ratio("floor_to_model_b1_ratio", figures.get("floor"),
                         numbers["model_inference_b1_images_per_s"])
            report.ratio("floor_to_model_b16_ratio", figures.get("floor"),
                         numbers["model_inference_b16_images_per_s"])
            if "reprocess" in figures:
                report.ratio("reprocess_to_model_b64_ratio", figures["reprocess"],
                             numbers["model_inference_b64_images_per_s"])

        if "web" in only and web_n > 0:
            report.note(f"web: review app with {web_n} studies seeded (SQLite, `cxrtriage web` over loopback "
                        "HTTP, signed in); first paint of a 3000 x 2500 12-bit image never served before "
                        "against a 224 x 224 one; the web process's VmRSS after all of it")
            seconds, pages, paint = web.measure(web_n)
            report.add("web_studies", web_n)
            report.add("web_seed_s", seconds, 1)
            for key, timing in pages.items():
                report.add(f"web_{key}_median_ms", timing["median_ms"], 1)
            report.ratio("web_worklist_page1_to_metrics_ratio", pages["worklist_page1"]["median_ms"],
                         pages["metrics"]["median_ms"])
            for key, value in paint.items():
                report.add(f"web_{key}", value, 1)
            for what in ("preview", "viewer_data"):
                report.ratio(f"web_large_to_small_{what}_ratio", paint[f"large_{what}_ms"],
                             paint[f"small_{what}_ms"])

        if "hostile" in only:
            _hostile(report, work)

        if "route" in only:
            report.note("route: one instance from C-STORE to the SR sent back; per hop: database "
                        "transactions, SQL statements, reads of stored or spooled files (all processes)")
            (work / "route").mkdir()
            for hop, (transactions, statements, reads) in instance_route.measure(work / "route").items():
                key = "route_" + hop.split(",")[0].lower().replace("-", "")
                report.add(f"{key}_transactions", transactions)
                report.add(f"{key}_statements", statements)
                report.add(f"{key}_file_reads", reads)
    finally:
        if os.environ.get("BENCH_KEEP") == "1":
            report.note(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report.add("bench_total_s", time.perf_counter() - started, 0)
    report.add("bench_load_avg_1min_end", os.getloadavg()[0])
    report.finish()


def _pipeline(report: Report, work: Path, studies: list, latency_n: int, quiet: float,  # type: ignore[type-arg]
              reprocess_on: bool, cuda: bool, figures: dict[str, float]) -> None:
    warmup, *probe = corpus.make_studies(work / "latency", latency_n + 1, seed=5, images_per_study=1,
                                         syntaxes=[ExplicitVRLittleEndian], prefix="L")
    service = pipeline.Service(work / "pipeline", quiet)
    with service:
        warmup_s = service.send_and_wait(warmup)
        report.note(f"pipeline: cxrtriage serve up; a warm-up study's SR came back in {warmup_s:.1f} s")
        report.note("pipeline: Orthanc pushes each study (asynchronous job) to cxrtriage serve, heatmaps "
                    f"on, quiet time {quiet:g} s (not subtracted); first push to last SR at Orthanc")
        images = sum(len(s.paths) for s in studies)
        result = pipeline.throughput(service, studies, timeout=max(300.0, 10.0 * images))
        figures["pipeline"] = result.images / result.seconds
        report.add("pipeline_studies", result.studies)
        report.add("pipeline_images", result.images)
        report.add("pipeline_seconds", result.seconds)
        report.add("pipeline_studies_per_s", result.studies / result.seconds, 3)
        report.add("pipeline_images_per_s", result.images / result.seconds, 3)
        figures["pipeline_cpu"] = result.cpu_seconds / result.images
        report.add("pipeline_cpu_s_per_image", figures["pipeline_cpu"], 3)
        for name, used in sorted(result.cpu_by_process.items()):
            report.add(f"pipeline_cpu_s_per_image_{name}", used / result.images, 3)
        report.add("pipeline_duplicate_srs", result.duplicate_srs)
        report.add("pipeline_heatmaps_at_pacs", result.heatmaps)
        report.add("pipeline_studies_done", result.states.get("done", 0))
        report.add("pipeline_studies_not_done", result.studies - result.states.get("done", 0))

        report.note(f"latency: {len(probe)} one-image studies by storescu, one at a time; storescu's "
                    f"return to the SR at Orthanc minus the {quiet:g} s quiet time")
        seconds = pipeline.latencies(service, probe)
        report.add("latency_studies", len(seconds))
        report.add("latency_p50_s", percentile(seconds, 0.5))
        report.add("latency_p90_s", percentile(seconds, 0.9))
        report.add("latency_max_s", max(seconds))
        figures["latency_p50"] = percentile(seconds, 0.5)

        report.note("rss: peak RSS (VmHWM) of each process under cxrtriage serve, after the latency run; "
                    "reference: the floor's predict process")
        for name, mb in pipeline.peak_rss(service).items():
            report.add(f"rss_{name}_peak_mb", mb, 0)
            report.ratio(f"rss_{name}_to_predict_ratio", mb, figures.get("predict_rss"), 2)

        if reprocess_on:
            report.note("reprocess: cxrtriage reprocess --include-read of the pipeline's studies, unpaced")
            again = pipeline.reprocess(service, studies, timeout=max(300.0, 10.0 * images), gpu=cuda)
            figures["reprocess"] = again.images / again.seconds
            report.add("reprocess_images", again.images)
            report.add("reprocess_seconds", again.seconds)
            report.add("reprocess_images_per_s", figures["reprocess"], 3)
            if cuda:
                report.add("reprocess_gpu_busy_percent", again.gpu_busy_percent, 1)
    report.note(f"latency samples (s): {', '.join(f'{s:.2f}' for s in seconds)}; "
                f"median {median(seconds):.2f}")


def _hostile(report: Report, work: Path) -> None:
    report.note("hostile: each attack beside an honest client; *_honest_ratio is that client's time "
                "against the same request on the idle server")
    for key, value in hostile.measure(work / "hostile").items():
        report.add(key, value)
    hostile_pixels.measure(report)
    for key, value in hostile_web.measure().items():
        report.add(key, value)


def _ingest(report: Report, work: Path, count: int) -> None:
    one, four = ingest.make_sets(work / "ingest-files", count)
    mb = sum(p.stat().st_size for p in one) / 1e6 / len(one)
    report.note(f"ingest: {count} new uncompressed DX instances ({mb:.1f} MB each) per round over one "
                "association, then another over four parallel storescu; every instance verified stored")
    rates = {"storescp": ingest.storescp(work / "ingest-scp", one, four),
             "orthanc": ingest.orthanc(work / "ingest-orthanc", one, four),
             "cxrtriage": ingest.receiver(work / "ingest-rx", one, four),
             "cxrtriage_group2": ingest.receiver(work / "ingest-rx2", one, four, processes=2)}
    postgres, urls = ingest.postgres_databases(work, ["ingest_one", "ingest_group2"])
    try:
        rates["cxrtriage_pg"] = ingest.receiver(work / "ingest-rx-pg", one, four,
                                                database_url=urls["ingest_one"])
        rates["cxrtriage_group2_pg"] = ingest.receiver(work / "ingest-rx2-pg", one, four, processes=2,
                                                       database_url=urls["ingest_group2"])
    finally:
        postgres.stop()
    floor_rate = ingest.durable_floor(work / "ingest-floor", one + four)
    report.add("ingest_durable_write_floor_files_per_s", floor_rate, 1)
    report.add("ingest_instances_per_round", count)
    for mode in ("one", "four"):
        label = {"one": "1assoc", "four": "4assoc"}[mode]
        for name, r in rates.items():
            report.add(f"ingest_{label}_{name}_instances_per_s", getattr(r, mode), 1)
        for name in ("cxrtriage", "cxrtriage_group2", "cxrtriage_pg", "cxrtriage_group2_pg"):
            report.ratio(f"ingest_{label}_{name}_to_orthanc_ratio", getattr(rates[name], mode),
                         getattr(rates["orthanc"], mode), 2)
            report.ratio(f"ingest_{label}_{name}_to_storescp_ratio", getattr(rates[name], mode),
                         getattr(rates["storescp"], mode), 2)
            report.ratio(f"ingest_{label}_{name}_to_durable_floor_ratio", getattr(rates[name], mode),
                         floor_rate, 2)
    report.add("ingest_receiver_peak_rss_mb", rates["cxrtriage"].peak_rss_mb, 0)
    report.add("ingest_receiver_group2_peak_rss_mb", rates["cxrtriage_group2"].peak_rss_mb, 0)
    report.add("ingest_receiver_group2_pg_peak_rss_mb", rates["cxrtriage_group2_pg"].peak_rss_mb, 0)
    report.add("ingest_orthanc_peak_rss_mb", rates["orthanc"].peak_rss_mb, 0)


if __name__ == "__main__":
    main()
