"""Model speed and memory: training images/s, inference images/s at batch 1, 16 and 64, and peak
memory, with torchvision's standard ResNet-18 (224 px, RGB) measured in the same run as reference
for each. Part of `benchmarks.run`, which passes the model package the pipeline serves.

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
    fn()  # warm-up: on CPU the first calls at a new shape are several times slower
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return images * repeats / (time.perf_counter() - start)


def _training_rate(model: torch.nn.Module, x: torch.Tensor, classes: int, steps: int) -> float:
    """Images/s of AdamW steps on one batch of random inputs and labels."""
    model = model.to(x.device).train()
    optimizer = torch.optim.AdamW(model.parameters())
    y = torch.randint(0, classes, (len(x),), device=x.device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    return _rate(step, len(x), steps)


def training_rate(size: int, device: torch.device, batch: int = 32, steps: int = 4) -> float:
    x = torch.rand(batch, 1, size, size, device=device)
    return _training_rate(build_model("resnet18", 2), x, 2, steps)


def reference_rate(batch: int, device: torch.device) -> float:
    model = resnet18(weights=None).to(device).eval()
    x = torch.rand(batch, 3, 224, 224, device=device)

    def run() -> None:
        with torch.inference_mode():
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return _rate(run, batch, max(1, 64 // batch))


def reference_training_rate(device: torch.device, batch: int = 32, steps: int = 4) -> float:
    """torchvision's ResNet-18 trained at 224 px RGB, the usual published reference point."""
    x = torch.rand(batch, 3, 224, 224, device=device)
    return _training_rate(resnet18(weights=None), x, 1000, steps)


def measure(package: Path = BUNDLED, device: torch.device | None = None) -> dict[str, float | int | str]:
    """Figures keyed for the report: training and inference images/s of the package's
    architecture at its input size, each beside torchvision's ResNet-18 at 224 px RGB."""
    device = device or choose_device()
    classifier = Classifier(package, device=device)
    size = classifier.input_size
    out: dict[str, float | int | str] = {
        "model_device": device.type, "model_threads": torch.get_num_threads(), "model_input_px": size}
    out["model_training_images_per_s"] = training_rate(size, device)
    out["model_training_reference_images_per_s"] = reference_training_rate(device)
    for batch in (1, 16, 64):
        images = np.random.default_rng(0).random((batch, size, size)).astype(np.float32)
        ours = _rate(lambda images=images: classifier.probabilities(images), batch, max(1, 64 // batch))
        out[f"model_inference_b{batch}_images_per_s"] = ours
        out[f"model_inference_b{batch}_reference_images_per_s"] = reference_rate(batch, device)
    out["model_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        out["model_peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    for key, value in measure(BUNDLED).items():
        print(f"{key} {value:.1f}" if isinstance(value, float) else f"{key} {value}")


if __name__ == "__main__":
    main()
