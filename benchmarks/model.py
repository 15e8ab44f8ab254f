"""Model speed and memory: training images/s, inference images/s at batch 1, 16 and 64, and peak
memory, with torchvision's standard ResNet-18 (224 px, RGB) measured in the same run as reference.

Run: make benchmark   (or .venv/bin/python -m benchmarks.model)
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.models import resnet18

from cxrtriage.models.architectures import build_model
from cxrtriage.models.inference import Classifier, choose_device

BUNDLED = Path(__file__).resolve().parents[1] / "src/cxrtriage/bundled/pneumonia-resnet18"


def _rate(fn, images: int, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return images * repeats / (time.perf_counter() - start)


def training_rate(size: int, device: torch.device, batch: int = 32, steps: int = 4) -> float:
    model = build_model("resnet18", 2).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters())
    x = torch.rand(batch, 1, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return _rate(step, batch, steps)


def reference_rate(batch: int, device: torch.device) -> float:
    model = resnet18(weights=None).to(device).eval()
    x = torch.rand(batch, 3, 224, 224, device=device)

    def run() -> None:
        with torch.inference_mode():
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return _rate(run, batch, max(1, 64 // batch))


def main() -> None:
    device = choose_device()
    classifier = Classifier(BUNDLED, device=device)
    size = classifier.input_size
    print(f"\nModel benchmark on {device} ({torch.get_num_threads()} threads), "
          f"{classifier.manifest.name} at {size} px")
    print(f"  training (resnet18, {size} px, batch 32): {training_rate(size, device):.1f} images/s")
    for batch in (1, 16, 64):
        images = np.random.default_rng(0).random((batch, size, size)).astype(np.float32)
        ours = _rate(lambda images=images: classifier.probabilities(images), batch, max(1, 64 // batch))
        ref = reference_rate(batch, device)
        print(f"  inference batch {batch:3d}: {ours:8.1f} images/s   reference resnet18@224 RGB "
              f"{ref:8.1f} images/s   ratio {ours / ref:5.2f}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak resident memory of this process: {peak_mb:.0f} MB")
    if device.type == "cuda":
        print(f"  peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
