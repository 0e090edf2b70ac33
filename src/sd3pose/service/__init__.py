"""The HTTP service: the hosted "SD3 Medium Pose ControlNet" API on your own machine.

`create_app(settings, generator_factory=...)` builds the FastAPI app; `sd3pose serve` runs it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServiceSettings", "create_app"]


def __getattr__(name: str) -> Any:
    # Lazy: `sd3pose keys ...` should not pay for importing FastAPI.
    if name == "create_app":
        from sd3pose.service.app import create_app

        return create_app
    if name == "ServiceSettings":
        from sd3pose.service.settings import ServiceSettings

        return ServiceSettings
    raise AttributeError(name)
