"""Domain errors. The core raises these; each edge (CLI now, API later) translates them once.

``code`` is stable and machine-readable; ``param`` names the offending field or argument when there is one.
"""

from __future__ import annotations


class TemperingError(Exception):
    code = "tempering_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class ModelNotFoundError(TemperingError):
    """A model id that the catalog or the fine-tuned registry does not know."""

    code = "model_not_found"


class ModelUnavailableError(TemperingError):
    """A known model whose weights are not on this machine."""

    code = "model_unavailable"


class InvalidDataError(TemperingError):
    """A data file that failed validation; ``report`` holds every problem found."""

    code = "invalid_data"

    def __init__(self, message: str, report=None):
        super().__init__(message, param="training_file")
        self.report = report


class InvalidConfigError(TemperingError):
    code = "invalid_config"


class DeployRefusedError(TemperingError):
    """A deployment refused because the model's stored evaluation says it is worse than its base."""

    code = "worse_than_base"


class ContentFilteredError(TemperingError):
    """A prompt the content filter blocked. ``content_filter_result`` is Azure's per-category annotation,
    rendered as the error's ``innererror`` (code ``ResponsibleAIPolicyViolation``)."""

    code = "content_filter"

    def __init__(self, message: str, content_filter_result: dict, *, param: str = "prompt"):
        super().__init__(message, param=param)
        self.innererror = {"code": "ResponsibleAIPolicyViolation", "content_filter_result": content_filter_result}


class ContentFilterUnavailableError(TemperingError):
    """A content filter that could not run under a fail-closed policy: the request is refused (503)."""

    code = "content_filter_error"
