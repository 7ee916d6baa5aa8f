"""Domain errors: bad input is reported as one paragraph, not a traceback."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class for errors caused by input or environment, not by a bug."""


class DataLoadError(PipelineError):
    """A data source could not be found, read or parsed."""


class DataValidationError(PipelineError):
    """A dataset failed one or more validation checks.

    Attributes:
        failures: every failed check, as ``"<split>: <check>: <detail>"`` strings.
    """

    def __init__(self, source: str, failures: list[str]) -> None:
        self.source = source
        self.failures = list(failures)
        checks = "; ".join(self.failures)
        super().__init__(
            f"Dataset {source} failed {len(self.failures)} validation "
            f"check(s): {checks}."
        )


class RegistryError(PipelineError):
    """A registry operation cannot be done (missing version, no champion...)."""


class ServedModelError(PipelineError):
    """A registered version does not load or answer as a fresh process serves it."""


class PredictionInputError(PipelineError):
    """Batch-prediction input is missing, unreadable or of the wrong layout."""


class TrackingUnavailableError(PipelineError):
    """The MLflow tracking server cannot be reached."""


class ExperimentDeletedError(PipelineError):
    """The configured MLflow experiment was deleted; MLflow keeps its name."""


class DistributeConfigError(PipelineError):
    """``TF_CONFIG`` does not describe a usable cluster."""


class SweepError(PipelineError):
    """A sweep's grid is unusable, a trial cannot run, or no trial succeeded."""


class DigitImageError(PipelineError):
    """A picture does not show exactly one digit (no ink, or several digits).

    Raised per image, so a batch can report the file and go on with the others.

    Attributes:
        reason: a short code, ``"no ink"`` or ``"several digits"``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")
