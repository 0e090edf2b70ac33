"""The HTTP service: the hosted "SD3 Medium Pose ControlNet" API on your own machine.

`sd3pose.service.app.create_app` builds the FastAPI app; `sd3pose serve` runs it. Nothing is imported
here, so `sd3pose keys ...` does not pay for importing FastAPI.
"""
