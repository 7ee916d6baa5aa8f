"""Process-level settings applied by the entry points before Prefect loads."""

from __future__ import annotations

import logging
import os

from mnist_pipeline.errors import PipelineError

#: Defaults that keep a run's console honest (no telemetry errors from an
#: offline machine, stage logs in Prefect's UI, no TensorFlow C++ INFO banners)
#: and its training fast: TensorFlow's oneDNN kernels are on by default only on
#: CPUs with AVX-512 VNNI or newer; on AVX2 CPUs turning them on trained this
#: model about 1.7x faster (benchmarks/README.md). TensorFlow reads the flag
#: once, when it loads. Prefect's temporary server gets 120 s to start instead of
#: 20: creating its database in a new PREFECT_HOME took longer than 20 s on two
#: busy cores. A value the user set in the environment always wins.
ENVIRONMENT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "mnist_pipeline",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TF_CPP_MIN_LOG_LEVEL": "1",
    "TF_ENABLE_ONEDNN_OPTS": "1",
    # MLflow's client retries 7 times with backoff factor 2 (minutes) by default;
    # an unattended run should fail within seconds when the server is gone.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


def configure_environment() -> None:
    """Apply :data:`ENVIRONMENT_DEFAULTS` where the user has not set a value."""
    for key, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(key, value)


class _HideExpectedTracebacks(logging.Filter):
    """Drops the traceback from log records about input errors (not bugs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, PipelineError):
            record.exc_info = None
            record.exc_text = None
        return True


class _DropRetracingNotice(logging.Filter):
    """Drops TensorFlow's "excessive retracing" notice.

    A training run holds several models at once on purpose (the trained one, the
    registered candidate loaded back through MLflow, the champion); each one's
    first ``predict`` traces its own function, which TensorFlow counts as
    retracing of one function and warns about after five.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


_FILTERS = {
    "prefect.flow_runs": _HideExpectedTracebacks(),
    "prefect.task_runs": _HideExpectedTracebacks(),
    "tensorflow": _DropRetracingNotice(),
}


def configure_flow_logs() -> None:
    """Log bad input as one line (tracebacks stay for bugs); drop known noise."""
    for name, log_filter in _FILTERS.items():
        logger = logging.getLogger(name)
        if log_filter not in logger.filters:
            logger.addFilter(log_filter)
