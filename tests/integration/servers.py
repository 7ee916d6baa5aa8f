"""Background processes for integration tests: free ports, bounded waits, clean stops.

Every process starts in its own process group, so stopping it also stops what it
spawned (uvicorn workers, MLflow's job consumers), whatever happened in the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port that nothing listens on at 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without Prefect or MLflow settings, plus ``extra``.

    ``PYTHONPATH`` and ``PATH`` pass through, so subprocesses import this checkout.
    """
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))
    }
    return environment | extra


@contextmanager
def background(
    command: Sequence[str | Path],
    *,
    cwd: Path,
    env: dict[str, str],
    log: Path,
    grace: float = 30.0,
    user: str | None = None,
) -> Iterator[subprocess.Popen]:
    """Run ``command`` with output to ``log``; stop its whole group on exit.

    Args:
        grace: seconds between Ctrl+C and SIGKILL when stopping it.
        user: run it as this user (the test runs as root).
    """
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(part) for part in command],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=user,
        )
    try:
        yield process
    finally:
        stop(process, grace)


def stop(process: subprocess.Popen, grace: float = 30.0) -> None:
    """Ctrl+C (SIGINT) to the process group, then SIGKILL to whatever is left."""
    _signal_group(process.pid, signal.SIGINT)
    with suppress(subprocess.TimeoutExpired):
        process.wait(grace)
    _signal_group(process.pid, signal.SIGKILL)
    process.wait(30)


def _signal_group(pgid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def run(
    command: Sequence[str | Path],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float = 300,
    user: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; fail the test with its output if it fails."""
    command = [str(part) for part in command]
    result = subprocess.run(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        user=user,
    )
    assert result.returncode == 0, (
        f"{' '.join(command)} exited {result.returncode}:\n"
        f"{result.stdout}\n{result.stderr}"
    )
    return result


def wait_for(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
    interval: float = 1.0,
) -> T:
    """Poll ``check`` until it returns a truthy value, at most ``timeout`` seconds.

    Fails early when ``process`` (whose output is in ``log``) has exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"{what}: process exited with {process.returncode}\n{_tail(log)}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f} s\n{_tail(log)}")
        time.sleep(interval)


def responds(url: str) -> bool:
    """Whether ``url`` answers 200 right now."""
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"--- last lines of {log.name} ---\n" + "\n".join(text)
