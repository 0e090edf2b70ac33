"""Session fixtures shared by the whole suite: the tiny random-weight model, built once, and an engine on it."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with base/ (SD3 pipeline layout) and controlnet/ (InstantX layout) of the tiny model."""
    from sd3pose.cli.tiny_model import write_tiny_model

    directory = tmp_path_factory.mktemp("tiny-model")
    write_tiny_model(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path):
    """An Engine (CPU, float32, with T5) on the tiny model."""
    from sd3pose.engine import Engine

    return Engine.load(tiny_model_dir / "base", tiny_model_dir / "controlnet", device="cpu", dtype="fp32")
