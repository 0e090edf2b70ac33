"""Loading models for a command: with no --model, the random-weight demo model is built (once) and used."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sd3pose.errors import ModelLoadError
from sd3pose.settings import EngineSettings

if TYPE_CHECKING:
    from sd3pose.images import InputLimits
    from sd3pose.pipeline import Generator

log = logging.getLogger(__name__)


def with_demo_model(engine: EngineSettings) -> EngineSettings:
    """The settings with the demo model's folders filled in when no --model is given (built on first use)."""
    if engine.model is not None:
        if engine.controlnet is None:
            raise ModelLoadError(
                "--model needs --controlnet too: a ControlNet folder or hub id (e.g. InstantX/SD3-Controlnet-Pose)"
            )
        return engine
    if engine.controlnet is not None:
        log.warning("--controlnet given without --model: using the demo model for both")
    from sd3pose.cli.tiny_model import ensure_demo_model

    base, controlnet = ensure_demo_model(Path(engine.data_dir) / "demo-model")
    return engine.model_copy(update={"model": str(base), "controlnet": str(controlnet)})


def load_generator(
    engine: EngineSettings, *, input_limits: InputLimits | None = None, warm_up: bool = False
) -> Generator:
    """Load the models `engine` names (or the demo model); `warm_up` suits servers, not one-shot commands."""
    from sd3pose.pipeline import Generator

    return Generator.create(with_demo_model(engine), input_limits=input_limits, warm_up=warm_up)
