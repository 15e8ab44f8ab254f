"""Training, resume, packaging and initial weights, on a tiny subset of real images."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cxrtriage.errors import ModelError
from cxrtriage.models.architectures import ARCHITECTURES, build_model
from cxrtriage.models.augment import AugmentConfig, augment_batch
from cxrtriage.models.inference import Classifier
from cxrtriage.models.packaging import package_run
from cxrtriage.models.train_config import TrainConfig
from cxrtriage.models.training import (
    BEST_WEIGHTS,
    CHECKPOINT,
    HISTORY,
    best_model,
    initial_model,
    parameter_groups,
    predict_logits,
    train,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "kermany-subset"
NO_AUGMENT = AugmentConfig(0, 0, 0, 0, 0, 0, 0, False)


def _cfg(**kw) -> TrainConfig:
    base = dict(name="test", version="0.0.1", data=str(DATA), architecture="resnet18", input_size=64,
                epochs=3, batch_size=8, lr=1e-3, schedule="step", step_epochs=100, balance="none",
                augment=NO_AUGMENT, val_fraction=0.25, patience=100, num_threads=2)
    return TrainConfig(**{**base, **kw})


def test_a_few_steps_make_the_loss_fall(tmp_path):
    train(_cfg(epochs=6), tmp_path, progress=False)
    history = json.loads((tmp_path / HISTORY).read_text())
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    cfg = _cfg(epochs=3, balance="sampler", augment=AugmentConfig(), mixup_alpha=0.2)
    train(cfg, tmp_path / "whole", progress=False)
    train(cfg, tmp_path / "parts", progress=False, stop_after_epochs=1)
    assert json.loads((tmp_path / "parts" / HISTORY).read_text())[-1]["epoch"] == 1
    train(cfg, tmp_path / "parts", progress=False)
    whole = torch.load(tmp_path / "whole" / CHECKPOINT, weights_only=True)
    parts = torch.load(tmp_path / "parts" / CHECKPOINT, weights_only=True)
    for key, value in whole["model"].items():
        assert torch.equal(value, parts["model"][key]), key
    assert whole["loop"]["history"] == parts["loop"]["history"]


def test_resume_with_a_weight_average_and_the_earliest_holdout_reproduces_a_whole_run(tmp_path):
    cfg = _cfg(epochs=2, balance="sampler", augment=AugmentConfig(aspect=0.5, erase=0.5),
               mixup_alpha=0.2, ema_decay=0.9, holdout="earliest", early_stopping_metric="none")
    data = train(cfg, tmp_path / "whole", progress=False)
    assert sorted({s.patient for s in data.val}) == ["im-0393", "im-0394", "p-person1161", "p-person1162"]
    assert not {s.patient for s in data.train} & {s.patient for s in data.val}
    train(cfg, tmp_path / "parts", progress=False, stop_after_epochs=1)
    train(cfg, tmp_path / "parts", progress=False)
    whole = torch.load(tmp_path / "whole" / CHECKPOINT, weights_only=True)
    parts = torch.load(tmp_path / "parts" / CHECKPOINT, weights_only=True)
    for key, value in whole["model"].items():
        assert torch.equal(value, parts["model"][key]), key
    assert whole["ema"]["steps"] == parts["ema"]["steps"] > 0
    for key, value in whole["ema"]["weights"].items():
        assert torch.equal(value, parts["ema"]["weights"][key]), key
    assert whole["loop"]["history"] == parts["loop"]["history"]
    kept = load_file(str(tmp_path / "whole" / BEST_WEIGHTS))
    assert torch.equal(kept["fc.weight"], whole["ema"]["weights"]["fc.weight"]), "the average is kept"


def test_package_loads_back_with_identical_predictions(tmp_path):
    cfg = _cfg(epochs=2)
    config_file = tmp_path / "train.toml"
    config_file.write_text("[train]\n")
    train(cfg, tmp_path / "run", progress=False)
    out = package_run(cfg, tmp_path / "run", tmp_path / "pkg", config_file)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labels"] == ["NORMAL", "PNEUMONIA"] and 0 <= manifest["threshold"] <= 1
    assert (out / "MODEL_CARD.md").read_text().count("CC BY 4.0") >= 1
    model = build_model("resnet18", 2)
    model.load_state_dict(load_file(str(tmp_path / "run" / BEST_WEIGHTS)))
    model.eval()
    images = np.random.default_rng(0).random((3, 64, 64)).astype(np.float32)
    classifier = Classifier(out, device=torch.device("cpu"))
    with torch.inference_mode():
        direct = torch.softmax(model(torch.from_numpy((images - 0.5) / 0.25)[:, None])
                               / manifest["temperature"], 1).numpy()
    assert classifier.probabilities(images) == pytest.approx(direct, abs=1e-6)
    assert manifest["regression"]["predictions"], "regression predictions are recorded"
    from cxrtriage.models.data import discover

    held_out = discover(tmp_path / "run" / "validation.csv")
    assert held_out and all(Path(s.path).is_file() for s in held_out)


def test_an_equalising_package_serves_what_it_was_trained_on(tmp_path):
    cfg = _cfg(epochs=2, input_normalisation="equalise", early_stopping_metric="none")
    config_file = tmp_path / "train.toml"
    config_file.write_text("[train]\n")
    train(cfg, tmp_path / "run", progress=False)
    last = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["model"]
    kept = load_file(str(tmp_path / "run" / BEST_WEIGHTS))
    assert all(torch.equal(kept[k], v) for k, v in last.items()), "no early stopping: the last epoch"
    out = package_run(cfg, tmp_path / "run", tmp_path / "pkg", config_file)
    assert json.loads((out / "manifest.json").read_text())["input_normalisation"] == "equalise"
    classifier = Classifier(out, device=torch.device("cpu"))
    images = np.random.default_rng(0).random((3, 64, 64)).astype(np.float32)
    trained = predict_logits(best_model(cfg, tmp_path / "run", 2), images, cfg, torch.device("cpu"))
    assert classifier.logits(images).numpy() == pytest.approx(trained.numpy(), abs=1e-5)
    darker = classifier.probabilities(images ** 2.0)  # a power response: the same ranks
    assert darker == pytest.approx(classifier.probabilities(images), abs=1e-6)


def test_missing_initial_weights_name_the_file(tmp_path):
    missing = tmp_path / "weights" / "resnet18-imagenet.pth"
    with pytest.raises(ModelError, match="resnet18-imagenet.pth"):
        initial_model(_cfg(init=str(missing)), 2)


def test_imagenet_state_dict_from_disk_is_adapted_to_one_channel(tmp_path):
    from torchvision.models import resnet18

    rgb = resnet18(weights=None)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(rgb.state_dict(), path)
    model = initial_model(_cfg(init=str(path)), 2)
    assert torch.allclose(model.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.layer4[0].conv1.weight, rgb.layer4[0].conv1.weight)


@pytest.mark.parametrize(("freeze", "trainable"), [("head", {"fc"}), ("last_n", {"fc", "layer4"}),
                                                   ("none", None)])
def test_transfer_strategies(freeze, trainable):
    cfg = _cfg(freeze=freeze, trainable_blocks=1, base_lr=1e-5)
    model = build_model("resnet18", 2)
    groups = parameter_groups(model, cfg)
    names = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    if trainable is None:
        assert len(groups) == 2 and groups[1]["lr"] == 1e-5
        assert all(p.requires_grad for p in model.parameters())
    else:
        assert names == trainable


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_takes_one_channel(architecture):
    size = 75 if architecture == "inception_v3" else 64
    model = build_model(architecture, 2).eval()
    with torch.inference_mode():
        assert model(torch.zeros(1, 1, size, size)).shape == (1, 2)


def test_zero_augmentation_is_identity():
    images = torch.rand(2, 1, 32, 32)
    out = augment_batch(images, NO_AUGMENT, torch.Generator().manual_seed(0))
    assert torch.allclose(out, images, atol=1e-5)


def test_config_refuses_unknown_choices():
    from cxrtriage.errors import ConfigError

    with pytest.raises(ConfigError, match="schedule"):
        replace(_cfg(), schedule="linear")


def _two_runs(tmp_path: Path, split_b: int):  # type: ignore[no-untyped-def]
    """Two one-epoch runs with different seeds; the second member's patient split is `split_b`."""
    from cxrtriage.models.packaging import Member

    a, b = _cfg(epochs=1, split_seed=5), _cfg(epochs=1, seed=99, split_seed=split_b, name="test-b")
    config_file = tmp_path / "train.toml"
    config_file.write_text("[train]\n")
    train(a, tmp_path / "a", progress=False)
    train(b, tmp_path / "b", progress=False)
    return a, [Member(b, tmp_path / "b", config_file)], config_file


def test_ensemble_package_averages_members_stored_in_fp16(tmp_path):
    a, members, config_file = _two_runs(tmp_path, split_b=5)
    out = package_run(a, tmp_path / "a", tmp_path / "pkg", config_file, members=members, half=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [m["weights"] for m in manifest["members"]] == ["member-2.safetensors"]
    assert len(manifest["training_data"]["members"]) == 2
    assert load_file(str(out / "member-2.safetensors"))["fc.weight"].dtype == torch.float16
    images = np.random.default_rng(1).random((2, 64, 64)).astype(np.float32)
    x = torch.from_numpy((images - 0.5) / 0.25)[:, None]
    logits = []
    for run in ("a", "b"):
        net = build_model("resnet18", 2)
        net.load_state_dict(load_file(str(tmp_path / run / BEST_WEIGHTS)))
        with torch.inference_mode():
            logits.append(net.half().float().eval()(x))
    expected = torch.softmax(torch.stack(logits).mean(0) / manifest["temperature"], 1).numpy()
    got = Classifier(out, device=torch.device("cpu")).probabilities(images)
    assert got == pytest.approx(expected, abs=1e-5)
    assert "an ensemble of 2" in (out / "MODEL_CARD.md").read_text()


def test_ensemble_members_must_share_validation_patients(tmp_path):
    a, members, config_file = _two_runs(tmp_path, split_b=6)
    with pytest.raises(ModelError, match="split_seed"):
        package_run(a, tmp_path / "a", tmp_path / "pkg", config_file, members=members)
