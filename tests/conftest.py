"""Session fixtures shared by the whole suite: the tiny random-weight model (built once, and an engine on it) and the
real-shaped one (published widths and file formats, depth reduced), built once when a test asks for it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
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


REAL_CONFIGS = Path(__file__).parent / "fixtures" / "sd3-medium-configs"


@pytest.fixture(scope="session")
def real_shaped_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The real-shaped random-weight model (published widths and file formats, depth reduced; about 1.8 GB).

    Built once per session with the command a user would run, and deleted at the end of the session
    (pytest keeps its last temp folders, and this one is large).
    """
    from typer.testing import CliRunner

    from sd3pose.cli import app

    directory = tmp_path_factory.mktemp("real-shaped")
    result = CliRunner().invoke(app, ["make-tiny-model", str(directory), "--from-configs", str(REAL_CONFIGS)])
    assert result.exit_code == 0, result.output
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
