"""The generation engine: SD3 Medium + an SD3 pose ControlNet behind one `Engine.generate` call."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sd3pose.engine.engine import Engine, EngineJob, RowGroup, Sd3Denoiser, batch_key, initial_noise

# Loaded on first use, so `sd3pose --help` and API-only processes never import torch and diffusers.
_LAZY = {
    "Engine": "engine",
    "EngineJob": "engine",
    "RowGroup": "engine",
    "Sd3Denoiser": "engine",
    "batch_key": "engine",
    "initial_noise": "engine",
}

__all__ = [
    "Engine",
    "EngineJob",
    "RowGroup",
    "Sd3Denoiser",
    "batch_key",
    "initial_noise",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"sd3pose.engine.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'sd3pose.engine' has no attribute {name!r}")
