"""Process set-up of the entry points: the filters on flow logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from mnist_pipeline.errors import DataLoadError
from mnist_pipeline.runtime import configure_flow_logs


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[_Records]:
    """Records reaching the handlers of the loggers the filters sit on."""
    configure_flow_logs()
    handler = _Records()
    loggers = [logging.getLogger(n) for n in ("tensorflow", "prefect.task_runs")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


def test_retracing_notice_is_dropped_other_tensorflow_warnings_kept(records):
    logger = logging.getLogger("tensorflow")
    logger.warning(
        "5 out of the last 10 calls to <function f at 0x1> triggered tf.function "
        "retracing. Tracing is expensive."
    )
    logger.warning("Skipping variable loading for optimizer 'adam'")
    messages = [r.getMessage() for r in records.records]
    assert messages == ["Skipping variable loading for optimizer 'adam'"]


def test_bad_input_is_logged_without_traceback_bugs_with_one(records):
    logger = logging.getLogger("prefect.task_runs")
    for exc in (DataLoadError("no such file"), KeyError("bug")):
        try:
            raise exc
        except Exception:
            logger.error("Task run failed", exc_info=True)
    bad_input, bug = records.records
    assert bad_input.exc_info is None
    assert bug.exc_info is not None and bug.exc_info[0] is KeyError


def test_configuring_twice_adds_each_filter_once():
    configure_flow_logs()
    configure_flow_logs()
    filters = logging.getLogger("tensorflow").filters
    assert len([f for f in filters if type(f).__name__ == "_DropRetracingNotice"]) == 1
