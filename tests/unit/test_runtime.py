"""Process set-up of the entry points: the filters on flow logs, a quiet start."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from mnist_pipeline import runtime
from mnist_pipeline.errors import DataLoadError
from mnist_pipeline.runtime import NATIVE_BANNER, configure_flow_logs


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
    assert len([f for f in filters if type(f).__name__ == "DropRetracingNotice"]) == 1


def test_tensorflow_loads_without_its_native_banner():
    # The banner comes from C++ on file descriptor 2, twice per process.
    code = (
        "from mnist_pipeline.runtime import quiet_tensorflow_import\n"
        "quiet_tensorflow_import()\n"
        "import keras\n"
        "print(int(keras.ops.add(1, 2)))\n"
    )
    env = os.environ | {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
    for line in NATIVE_BANNER:
        assert line not in done.stderr


def test_other_lines_written_while_filtered_still_reach_stderr(capfd):
    with runtime._filtered_stderr(NATIVE_BANNER):
        os.write(2, b"oneDNN custom operations are on. noise\n")
        os.write(2, b"E0000 a real error\n")
    assert capfd.readouterr().err == "E0000 a real error\n"
