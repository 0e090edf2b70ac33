"""Errors that reach users: each carries one sentence saying what is wrong and how to fix it.

Every layer raises these; the HTTP layer maps `status_code` to the response code and the CLI
prints the message without a traceback.
"""

from __future__ import annotations


class Sd3PoseError(Exception):
    """Base for errors whose message is meant for the user."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequestError(Sd3PoseError):
    """A parameter is out of range or inconsistent (HTTP 400)."""

    status_code = 400


class ImageInputError(InvalidRequestError):
    """The input image cannot be fetched, decoded or is too large (HTTP 400)."""


class NoPersonFoundError(InvalidRequestError):
    """Pose detection found nobody in the photo (HTTP 400)."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message or "no person found in the image; send a clearer photo, or pose_mode=none for a ready pose map"
        )


class ModelLoadError(Sd3PoseError):
    """Model weights are missing or laid out wrongly (a configuration problem of the operator)."""

    status_code = 500


class GenerationCancelledError(Sd3PoseError):
    """The job was cancelled (its client went away, or it timed out)."""

    status_code = 504


class UpstreamError(Sd3PoseError):
    """A server we depend on failed: the image host of an input URL (DNS error, refused, 5xx) (HTTP 502)."""

    status_code = 502
