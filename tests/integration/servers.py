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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


@contextmanager
def mlflow_server(
    root: Path,
    *,
    backend: str | None = None,
    artifacts: Path | None = None,
    timeout: float = 300,
) -> Iterator[str]:
    """``mlflow server`` on a free loopback port; yields its URI.

    Args:
        root: its working folder and log; by default its SQLite store and
            artifacts are there too.
        backend: the backend store URI (default ``sqlite:///<root>/mlflow.db``).
        artifacts: where it keeps artifacts (default ``<root>/mlartifacts``).
    """
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = root / "mlflow-server.log"
    command = [BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1"]
    command += ["--backend-store-uri", backend or f"sqlite:///{root}/mlflow.db"]
    command += ["--artifacts-destination", str(artifacts or root / "mlartifacts")]
    env = clean_environment(MLFLOW_DISABLE_TELEMETRY="true")
    # Its files are thrown away afterwards: no graceful shutdown to wait for.
    with background(command, cwd=root, env=env, log=log, grace=5) as process:
        wait_for(
            lambda: responds(f"{uri}/health"),
            timeout=timeout,
            what="mlflow server",
            process=process,
            log=log,
        )
        yield uri


@dataclass
class Fault:
    """Answer requests whose path contains ``path`` with ``status`` (or drop them).

    ``method`` limits it to one HTTP method; with ``after`` it arms only once a
    request whose method and path contain ``after`` (e.g. ``"POST /alias"``)
    has passed.
    """

    path: str
    status: int = 500
    drop: bool = False
    method: str | None = None
    after: str | None = None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        """Whether this request gets the fault (and arms it if it is ``after``)."""
        if self.after is not None:
            if _request_matches(self.after, method, path):
                self.after = None
            return False
        return self.path in path and self.method in (None, method)


def _request_matches(pattern: str, method: str, path: str) -> bool:
    wanted_method, _, wanted_path = pattern.rpartition(" ")
    return wanted_path in path and wanted_method in ("", method)


class FaultProxy:
    """A loopback HTTP proxy in front of a server that injects faults on demand.

    Everything is forwarded unchanged until :meth:`fail` names a path; requests
    to it then get the fault (an error status, or a dropped connection) until
    :meth:`heal`.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=120)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._fault(self.command, self.path)
                if fault is not None and fault.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault is not None:
                    payload = b'{"error_code": "INTERNAL_ERROR", "message": "injected"}'
                    if fault.status == 403:
                        payload = (
                            b'{"error_code": "PERMISSION_DENIED", "message": "no"}'
                        )
                    self._reply(
                        fault.status, {"Content-Type": "application/json"}, payload
                    )
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in _HOP
                }
                answer = proxy._client.request(
                    self.command,
                    proxy.upstream + self.path,
                    headers=headers,
                    content=body,
                )
                self._reply(answer.status_code, answer.headers, answer.content)

            def _reply(self, status: int, headers, content: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() not in _HOP | {"content-encoding"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()

    def fail(
        self,
        path: str,
        status: int = 500,
        *,
        drop: bool = False,
        method: str | None = None,
        after: str | None = None,
    ) -> Fault:
        """Start failing requests to ``path``; returns the fault (it counts hits)."""
        fault = Fault(path, status, drop, method, after)
        with self._lock:
            self.faults.append(fault)
        return fault

    def heal(self) -> None:
        """Forward everything again."""
        with self._lock:
            self.faults.clear()

    def _fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None


_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "host",
    "upgrade",
}
