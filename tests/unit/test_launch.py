"""A command's process set-up, and the Prefect internals it relies on.

``mnist_pipeline.prefect_server`` launches Prefect's temporary server with the
command line of Prefect's own ``SubprocessASGIServer`` and points Prefect's
settings at it through ``refresh_global_settings_context``; if a Prefect
upgrade changes either, these tests fail.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import weakref

import pytest

from mnist_pipeline.launch import collect_imports, defer_garbage_collection
from mnist_pipeline.prefect_server import (
    SERVER_ENVIRONMENT,
    TEMPORARY_API_ENV,
    _with_parent_death_signal,
    server_command,
    shared_api_url,
)


def test_the_server_command_is_prefects_own_on_a_socket_handed_over(monkeypatch):
    from prefect.server.api import server as prefect_server
    from prefect.settings import get_current_settings

    launched = {}
    monkeypatch.setattr(
        prefect_server.subprocess,
        "Popen",
        lambda args, env: launched.update(args=args, env=env),
    )
    try:
        prefect_server.SubprocessASGIServer(port=12345)._run_uvicorn_command()
    finally:
        prefect_server.SubprocessASGIServer._instances.pop(12345, None)
    theirs = launched["args"]
    at = theirs.index("--host")
    assert theirs[at : at + 4] == ["--host", "127.0.0.1", "--port", "12345"]
    assert server_command(7) == theirs[:at] + ["--fd", "7"] + theirs[at + 4 :]
    # What Prefect adds to the environment (beyond this process's own and its
    # settings) is in ours, with the same values.
    settings = get_current_settings().to_environment_variables(exclude_unset=True)
    added = {
        name: value
        for name, value in launched["env"].items()
        if os.environ.get(name) != value and name not in settings
    }
    assert added and added.items() <= SERVER_ENVIRONMENT.items()


#: A module that prints its arguments and the signal it gets when its parent dies.
REPORTER = """\
import ctypes, sys
signal = ctypes.c_int()
ctypes.CDLL(None).prctl(2, ctypes.byref(signal), 0, 0, 0)  # PR_GET_PDEATHSIG
print(__name__, sys.argv[1:], signal.value)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_the_server_runs_as_its_module_set_to_end_with_this_process(tmp_path):
    (tmp_path / "reporter.py").write_text(REPORTER)
    command = [sys.executable, "-m", "reporter", "--fd", "7"]
    wrapped = _with_parent_death_signal(command)
    assert wrapped[:2] == [sys.executable, "-c"]
    assert wrapped[3:] == [str(os.getpid()), "reporter", "--fd", "7"]
    ran = subprocess.run(
        wrapped, cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert ran.stdout.split() == ["__main__", "['--fd',", "'7']", str(signal.SIGTERM)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_a_server_whose_command_is_already_gone_does_not_start(tmp_path):
    (tmp_path / "reporter.py").write_text(REPORTER)
    wrapped = _with_parent_death_signal([sys.executable, "-m", "reporter"])
    wrapped[3] = str(os.getpid() + 1_000_000)  # not this child's parent
    ran = subprocess.run(
        wrapped, check=False, cwd=tmp_path, capture_output=True, text=True
    )
    assert ran.returncode == 1 and ran.stdout == ""
    assert "the command that started this server has ended" in ran.stderr


def test_only_a_module_command_is_wrapped():
    if sys.platform.startswith("linux"):
        with pytest.raises(ValueError, match="not a `python -m module` command"):
            _with_parent_death_signal([sys.executable, "server.py"])
    else:
        command = [sys.executable, "-m", "uvicorn"]
        assert _with_parent_death_signal(command) == command


def test_refreshing_prefects_global_settings_reads_the_environment(monkeypatch):
    from prefect import context
    from prefect.settings import get_current_settings

    url = "http://127.0.0.1:9/api"
    # Restored as it was after: an integration test's server (the session's)
    # may be the global settings' API in this worker.
    before = context.GLOBAL_SETTINGS_CONTEXT
    monkeypatch.setenv("PREFECT_API_URL", url)
    context.refresh_global_settings_context()
    try:
        seen = []
        # A new thread has no settings context of its own (as a command's main
        # thread before its flow): it reads the global one.
        thread = threading.Thread(target=lambda: seen.append(get_current_settings()))
        thread.start()
        thread.join()
        assert seen[0].api.url == url
    finally:
        monkeypatch.undo()
        context.GLOBAL_SETTINGS_CONTEXT = before


def test_a_temporary_server_is_not_a_shared_one(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    temporary = "http://127.0.0.1:8123/api"
    monkeypatch.setenv(TEMPORARY_API_ENV, temporary)
    with temporary_settings(updates={PREFECT_API_URL: temporary}):
        assert shared_api_url() is None
    running = "http://127.0.0.1:4200/api"
    with temporary_settings(updates={PREFECT_API_URL: running}):
        assert shared_api_url() == running
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert shared_api_url() is None


class _Node:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def restore_gc():
    yield
    gc.unfreeze()
    gc.enable()


def test_collection_waits_for_the_imports_then_skips_what_they_left(restore_gc):
    defer_garbage_collection()
    assert not gc.isenabled()
    cycle = _Node()
    gone = weakref.ref(cycle)
    del cycle
    churn = [[] for _ in range(10_000)]  # would trigger young collections
    assert gone() is not None, "no automatic collection while disabled"
    del churn
    kept = _Node()
    collect_imports()
    assert gc.isenabled()
    assert gone() is None, "the garbage of the imports was collected"
    assert gc.get_freeze_count() > 0
    assert not any(obj is kept for obj in gc.get_objects()), "survivors are frozen"
