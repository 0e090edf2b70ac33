"""The generation engine: SD3 Medium + an SD3 pose ControlNet behind one `Engine.generate` call."""

from sd3pose.engine.engine import Engine, EngineJob, RowGroup, Sd3Denoiser, batch_key, initial_noise
from sd3pose.engine.tiny import ensure_demo_model, write_tiny_model

__all__ = [
    "Engine",
    "EngineJob",
    "RowGroup",
    "Sd3Denoiser",
    "batch_key",
    "ensure_demo_model",
    "initial_noise",
    "write_tiny_model",
]
