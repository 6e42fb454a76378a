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


class NotFoundError(TemperingError):
    """An object (a file, a job, …) that does not exist in the caller's project. Another project's object is
    reported exactly like a missing one, so ids never reveal what other projects hold."""

    code = "not_found"

    def __init__(self, kind: str, ident: str, *, param: str | None = None):
        super().__init__(f"No such {kind}: '{ident}'", param=param)
