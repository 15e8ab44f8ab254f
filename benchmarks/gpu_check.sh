#!/usr/bin/env bash
# The GPU check: one prepared run on a lent GPU machine, under 8 minutes, writing everything under
# $OUT (default build/gpu-check). It installs nothing from the internet:
#
#   1. nvidia-smi and torch must both see a GPU; without one it says so and exits 0 (nothing to
#      measure here), with a torch that has no CUDA it exits 2 (nothing it could measure right).
#   2. cuda.txt: the served model on the GPU, its weights and the CUDA memory one worker holds
#      (context + weights + a batch of CXRTRIAGE_BATCH_STUDIES images), the figures behind
#      docs/operations.md's "GPU workers".
#   3. benchmark-main.txt: BENCH_ONLY=model,floor,pipeline with BENCH_REPROCESS=1, so that bulk
#      reprocessing runs on the GPU and `reprocess_gpu_busy_percent` is sampled by nvidia-smi
#      (benchmarks/report.py GpuSampler) while it runs.
#   4. benchmark-live.txt: BENCH_ONLY=live (benchmarks/live_first.py) with a bulk run sized for a
#      GPU, if the time left allows: live latency while the GPU does bulk work, and its busy %.
#   5. gpu-util.csv and gpu-apps.csv: nvidia-smi every second for the whole run (utilisation and
#      memory; memory per process, i.e. per worker); summary.txt: the figures that matter.
#
# What it needs on the machine: the repository (this checkout), a Python with torch built for CUDA
# and the project's packages, and for steps 3 (pipeline) and 4 the peers dcmtk (storescu, echoscu)
# and Orthanc. It takes, in order: $GPU_CHECK_PYTHON, .venv/bin/python, python3. Where the
# project's packages are missing it installs carried wheels from .whl/ (pip --no-index, into
# /tmp); where dcmtk or Orthanc is missing it unpacks carried .deb files from .debs/ under /tmp.
# Without the peers, steps 3 and 4 shrink to the model and the floor, and summary.txt says so.
#
# Run:  OUT=/some/folder benchmarks/gpu_check.sh        (from any directory)
# Knobs: GPU_CHECK_SECONDS (budget, 450), GPU_CHECK_STUDIES (120), GPU_CHECK_LIVE_BULK (300).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
OUT=${OUT:-$REPO/build/gpu-check}
mkdir -p "$OUT"
BUDGET=${GPU_CHECK_SECONDS:-450}
STUDIES=${GPU_CHECK_STUDIES:-120}
LIVE_BULK=${GPU_CHECK_LIVE_BULK:-300}
START=$SECONDS
exec > >(tee "$OUT/gpu_check.log") 2>&1

say() { echo "gpu_check: $*"; }
left() { echo $((BUDGET - (SECONDS - START))); }

# 1. A GPU, seen by the driver and by torch.
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >"$OUT/nvidia-smi.txt" 2>&1; then
    say "SKIPPED: no NVIDIA GPU here (nvidia-smi is missing or finds no device); nothing was measured."
    say "Run this script on a machine with a GPU; the CPU figures come from \`make benchmark\`."
    exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$OUT/nvidia-smi.txt" 2>&1

PY=${GPU_CHECK_PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" >/dev/null 2>&1; then
        PY=.venv/bin/python
    else
        PY=python3
    fi
fi
export PYTHONPATH="$REPO/src:$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PROJECT_IMPORTS="import cxrtriage.cli.command, pydicom, pynetdicom, celery, sqlalchemy, alembic, highdicom"
if ! "$PY" -c "$PROJECT_IMPORTS" >/dev/null 2>&1 && compgen -G ".whl/*.whl" >/dev/null; then
    say "installing the carried wheels (.whl/) into /tmp/cxrtriage-site, offline"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/cxrtriage-site \
        .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/cxrtriage-site"
fi
if ! "$PY" -c "$PROJECT_IMPORTS" >/dev/null 2>&1; then
    "$PY" -c "$PROJECT_IMPORTS" 2>&1 | tail -n 3
    say "FAILED: $PY lacks the project's packages; carry them as wheels in .whl/ (cp312 for python3.12)"
    exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    "$PY" -c "import torch; print('torch', torch.__version__, 'built for CUDA', torch.version.cuda)"
    say "FAILED: nvidia-smi sees a GPU but this torch cannot use it; nothing was measured."
    exit 2
fi
say "python $PY; $("$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))")"

# The peers for the pipeline: on PATH, or carried as .deb files and unpacked under /tmp.
peers_ok() { command -v storescu >/dev/null && command -v echoscu >/dev/null && command -v Orthanc >/dev/null; }
export PATH="$PATH:/usr/sbin"
if ! peers_ok && compgen -G ".debs/*.deb" >/dev/null; then
    for deb in .debs/*.deb; do dpkg -x "$deb" /tmp/cxrtriage-root; done
    export PATH="$PATH:/tmp/cxrtriage-root/usr/bin:/tmp/cxrtriage-root/usr/sbin"
    export LD_LIBRARY_PATH="/tmp/cxrtriage-root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if peers_ok; then PARTS=model,floor,pipeline; else
    PARTS=model,floor
    say "dcmtk or Orthanc missing: no pipeline, reprocessing or live figures (model and floor only)"
fi

# Samplers for the whole run: GPU utilisation and memory, and memory per process.
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 >"$OUT/gpu-util.csv" 2>&1 &
UTIL=$!
nvidia-smi --query-compute-apps=timestamp,pid,process_name,used_memory --format=csv -l 1 \
    >"$OUT/gpu-apps.csv" 2>&1 &
APPS=$!
trap 'kill $UTIL $APPS 2>/dev/null' EXIT

# 2. One worker's CUDA memory: context, weights, and a batch through the served model.
BATCH=${CXRTRIAGE_BATCH_STUDIES:-8}
timeout 120 "$PY" - "$BATCH" >"$OUT/cuda.txt" 2>&1 <<'EOF'
import sys, time
import numpy as np
import torch
from cxrtriage.config import load_settings
from cxrtriage.models.inference import Classifier

batch = int(sys.argv[1])
free0, total = torch.cuda.mem_get_info()
torch.cuda.init()
torch.zeros(1, device="cuda")
free1, _ = torch.cuda.mem_get_info()
classifier = Classifier(load_settings().model, device=torch.device("cuda"))
weights = sum(p.numel() * p.element_size() for p in classifier.model.parameters())
size = classifier.input_size
images = np.random.default_rng(0).random((batch, size, size)).astype(np.float32)
classifier.probabilities(images)
torch.cuda.synchronize()
start = time.perf_counter()
for _ in range(20):
    classifier.probabilities(images)
torch.cuda.synchronize()
rate = 20 * batch / (time.perf_counter() - start)
free2, _ = torch.cuda.mem_get_info()
mib = 2**20
print(f"cuda_device {torch.cuda.get_device_name(0)}")
print(f"cuda_total_mib {total / mib:.0f}")
print(f"cuda_context_mib {(free0 - free1) / mib:.0f}")
print(f"model_weights_mib {weights / mib:.1f}")
print(f"model_input_px {size} views_per_image {1 + len(classifier.manifest.test_time_crops)}")
print(f"batch_images {batch}")
print(f"torch_max_allocated_mib {torch.cuda.max_memory_allocated() / mib:.0f}")
print(f"torch_reserved_mib {torch.cuda.memory_reserved() / mib:.0f}")
print(f"process_total_mib {(free0 - free2) / mib:.0f}")
print(f"batch_images_per_s {rate:.0f}")
EOF
say "cuda check exited $? after $((SECONDS - START)) s: $(tr '\n' ' ' <"$OUT/cuda.txt")"

# 3. Model, floor, pipeline and bulk reprocessing on the GPU.
export BENCH_STUDIES=$STUDIES BENCH_LATENCY_STUDIES=10 BENCH_REPROCESS=1
say "BENCH_ONLY=$PARTS BENCH_STUDIES=$STUDIES, at most $(( $(left) - 30 )) s"
BENCH_ONLY=$PARTS timeout $(( $(left) - 30 )) "$PY" -m benchmarks.run >"$OUT/benchmark-main.txt" 2>&1
say "main benchmark exited $? after $((SECONDS - START)) s"

# 4. Live studies during bulk reprocessing, in the time that is left.
if peers_ok && [ "$(left)" -gt 120 ]; then
    say "BENCH_ONLY=live BENCH_LIVE_BULK=$LIVE_BULK, at most $(( $(left) - 10 )) s"
    BENCH_ONLY=live BENCH_LIVE_BULK=$LIVE_BULK BENCH_LIVE_INTERVAL=1 timeout $(( $(left) - 10 )) \
        "$PY" -m benchmarks.run >"$OUT/benchmark-live.txt" 2>&1
    say "live benchmark exited $? after $((SECONDS - START)) s"
else
    say "live part not run (no peers, or $(left) s left)"
fi

# 5. The figures that matter, from both runs.
kill $UTIL $APPS 2>/dev/null
grep -hE '^(bench_device|model_inference_b(1|64)_images_per_s|model_peak_gpu_mb|floor_images_per_s|floor_gpu_busy_percent|pipeline_images_per_s|pipeline_to_floor_ratio|latency_p50_s|latency_p90_s|reprocess_images_per_s|reprocess_gpu_busy_percent|reprocess_to_floor_ratio|live_[a-z0-9_]+) ' \
    "$OUT"/benchmark-*.txt >"$OUT/summary.txt" 2>/dev/null
cat "$OUT/cuda.txt" >>"$OUT/summary.txt"
say "done in $((SECONDS - START)) s; summary:"
cat "$OUT/summary.txt"
