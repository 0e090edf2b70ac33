"""The HTTP service: the hosted "SD3 Medium Pose ControlNet" API on your own machine.

`create_app(settings)` builds the FastAPI app; `sd3pose serve` runs it under uvicorn.
"""

from sd3pose.service.app import create_app
from sd3pose.service.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
