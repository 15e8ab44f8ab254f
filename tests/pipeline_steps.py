"""Replacing one declared step of the worker's pipeline in a test."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from cxrtriage.worker import pipeline


def declared(name: str) -> Any:
    """The function the declared step `name` runs."""
    [step] = [s for s in pipeline.STEPS if s.name == name]
    return step.run


def replace_step(monkeypatch: pytest.MonkeyPatch, name: str, run: Any) -> None:
    """`run` in place of the step `name`, in `STEPS` and as the module's function of that name
    (the failure path calls some steps directly)."""
    declared(name)  # the step exists
    monkeypatch.setattr(pipeline, "STEPS", tuple(dataclasses.replace(s, run=run) if s.name == name else s
                                                 for s in pipeline.STEPS))
    monkeypatch.setattr(pipeline, name.replace(" ", "_"), run)
