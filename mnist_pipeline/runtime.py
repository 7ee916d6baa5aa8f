"""Process-level settings applied by the entry points before Prefect loads."""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

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
    # MLflow's own INFO lines ("Creating initial MLflow database tables...") and
    # its "View run ... at:" links printed to stdout interleave with Prefect's
    # log format; the flows log what matters, with links that open the UI in
    # its "Model training" mode. MLflow's warnings still show.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
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


#: What TensorFlow's native libraries write to the process's stderr as they load,
#: twice (two libraries, one line each, and absl's notice before it): not logs a
#: handler could filter, and not affected by ``TF_CPP_MIN_LOG_LEVEL``.
NATIVE_BANNER = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on.",
)


def quiet_tensorflow_import() -> None:
    """Import TensorFlow, when something first does, without its start-up banner.

    The import writes to file descriptor 2 from C++; it runs with that
    descriptor captured, and every captured line except :data:`NATIVE_BANNER`'s
    is written back to stderr afterwards (a real error still shows).
    """
    if "tensorflow" in sys.modules or any(
        isinstance(f, _QuietImport) for f in sys.meta_path
    ):
        return
    sys.meta_path.insert(0, _QuietImport("tensorflow"))


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds ``module`` once, and loads it with its native stderr filtered."""

    def __init__(self, module: str) -> None:
        self.module = module

    def find_spec(self, name, path, target=None):  # noqa: ANN001 - importlib's API
        if name != self.module:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):  # noqa: ANN001 - importlib's API
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:  # noqa: ANN001 - importlib's API
        # The module keeps its own loader (resources, inspection read it).
        module.__loader__ = module.__spec__.loader = self.loader
        with _filtered_stderr(NATIVE_BANNER):
            self.loader.exec_module(module)


@contextmanager
def _filtered_stderr(drop: tuple[str, ...]) -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines(True):
                if not any(text in line for text in drop):
                    sys.stderr.write(line)


class _HideExpectedTracebacks(logging.Filter):
    """Drops the traceback from log records about input errors (not bugs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, PipelineError):
            record.exc_info = None
            record.exc_text = None
        return True


class DropRetracingNotice(logging.Filter):
    """Drops TensorFlow's "excessive retracing" notice.

    A training run holds several models at once on purpose (the trained one, the
    registered candidate loaded back through MLflow, the champion); each one's
    first ``predict`` traces its own function, which TensorFlow counts as
    retracing of one function and warns about after five. ``serve-model``'s
    workers drop it too: each swapped-in version traces anew.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


_FILTERS = {
    "prefect.flow_runs": _HideExpectedTracebacks(),
    "prefect.task_runs": _HideExpectedTracebacks(),
    "tensorflow": DropRetracingNotice(),
}


def configure_flow_logs() -> None:
    """Log bad input as one line (tracebacks stay for bugs); drop known noise."""
    for name, log_filter in _FILTERS.items():
        logger = logging.getLogger(name)
        if log_filter not in logger.filters:
            logger.addFilter(log_filter)
