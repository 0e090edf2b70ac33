"""sd3pose: pose-guided image generation with SD3 Medium and the InstantX pose ControlNet."""

__version__ = "0.1.0"
