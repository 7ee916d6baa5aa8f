"""The temporary Prefect server a command starts: it serves, stops, or says why not."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from mnist_pipeline.files import database_lock_file, exclusive_lock
from mnist_pipeline.prefect_server import (
    SERVER_ENVIRONMENT,
    PrefectServerError,
    TemporaryServer,
)


def _environment(tmp_path, **extra: str) -> dict[str, str]:
    home = tmp_path / "prefect-home"
    return {
        **os.environ,
        **SERVER_ENVIRONMENT,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **extra,
    }


def _answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_it_serves_prefects_api_on_its_port_then_stops(tmp_path):
    database = tmp_path / "prefect-home" / "prefect.db"
    server = TemporaryServer(_environment(tmp_path), timeout=120, database=database)
    # Handed over to uvicorn, which would not set it on its connections.
    assert server._socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    server.start()
    try:
        server.wait()
        with urllib.request.urlopen(f"{server.api_url}/health", timeout=10) as health:
            assert health.status == 200
        query = urllib.request.Request(
            f"{server.api_url}/flows/filter",
            data=b"{}",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(query, timeout=10) as flows:
            assert json.load(flows) == []
        assert database.is_file(), "it migrated the database of its PREFECT_HOME"
        assert server.running
    finally:
        server.stop()
    assert not server.running
    assert not _answers(server.port)
    server.stop()  # a second stop (the exit hook after an explicit one) is harmless


def test_a_server_that_cannot_start_fails_the_command_saying_why(tmp_path):
    unusable = f"sqlite+aiosqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}"
    server = TemporaryServer(
        _environment(tmp_path, PREFECT_SERVER_DATABASE_CONNECTION_URL=unusable),
        timeout=120,
        database=None,
    )
    server.start()
    try:
        with pytest.raises(PrefectServerError, match="exited with code 3"):
            server.wait()
    finally:
        server.stop()
    assert not _answers(server.port)


def test_one_that_does_not_answer_in_time_is_ended_before_the_error(tmp_path):
    database = tmp_path / "prefect-home" / "prefect.db"
    server = TemporaryServer(_environment(tmp_path), timeout=0.5, database=database)
    server.start()
    try:
        with pytest.raises(PrefectServerError, match="did not answer within 0.5 s"):
            server.wait()
        # Ended while its boot still held the database lock: no half-started
        # server left migrating a database the next command is waiting for.
        assert not server.running
        with exclusive_lock(database_lock_file(database), timeout=0):
            pass  # and the lock is free again for that command
    finally:
        server.stop()


def test_stopped_while_it_migrates_it_holds_the_lock_until_its_process_ends(
    tmp_path,
):
    database = tmp_path / "prefect-home" / "prefect.db"
    server = TemporaryServer(_environment(tmp_path), timeout=120, database=database)
    alive_when_locked: list[bool] = []
    server.start()
    try:
        deadline = time.monotonic() + 60
        while not database.exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # its start-up has begun creating the database
        pid = server.pid
        assert database.exists() and pid is not None

        def next_command() -> None:
            with exclusive_lock(database_lock_file(database), timeout=60):
                alive_when_locked.append(_alive(pid))

        waiter = threading.Thread(target=next_command)
        waiter.start()
    finally:
        server.stop()  # Ctrl+C or an error while the server boots
    waiter.join(timeout=60)
    assert alive_when_locked == [False], "the lock was free while it still ran"
    with pytest.raises(PrefectServerError):
        server.wait()


def test_stopped_before_it_started_it_never_starts(tmp_path):
    server = TemporaryServer(_environment(tmp_path), timeout=120, database=None)
    server.stop()  # a command that ended (an error, a signal) before the start
    server.start()
    with pytest.raises(PrefectServerError, match="ended before it started"):
        server.wait()
    assert not server.running
    assert not _answers(server.port)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_a_killed_command_takes_its_server_with_it(tmp_path):
    # A command that starts its server, says where, and waits to be killed. The
    # pause proves the server outlives its start (the thread that started it).
    command = """if True:
        import json, sys, time
        from mnist_pipeline.prefect_server import TemporaryServer
        server = TemporaryServer(json.loads(sys.argv[1]), timeout=120, database=None)
        server.start()
        server.wait()
        time.sleep(2)
        print(server.port, server.pid, flush=True)
        time.sleep(600)
    """
    environment = json.dumps(_environment(tmp_path))
    server_pid = None
    with subprocess.Popen(
        [sys.executable, "-c", command, environment], stdout=subprocess.PIPE, text=True
    ) as command_process:
        try:
            port, server_pid = map(int, command_process.stdout.readline().split())
            assert _answers(port)
            command_process.kill()  # SIGKILL: no exit hook runs
            command_process.wait(timeout=10)
            deadline = time.monotonic() + 30
            while _alive(server_pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not _alive(server_pid), "the server outlived its killed command"
            assert not _answers(port)
        finally:
            command_process.kill()
            if server_pid is not None and _alive(server_pid):
                os.kill(server_pid, signal.SIGKILL)  # not left running on CI


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process, not yet reaped or a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
