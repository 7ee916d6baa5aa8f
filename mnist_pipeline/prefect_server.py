"""The temporary Prefect server of one command run without ``PREFECT_API_URL``.

Prefect starts such a server itself at a flow's first API call, after the
flow's modules (TensorFlow, MLflow) have imported and after importing its own
server application (FastAPI, SQLAlchemy: about 1.5 s on 2 cores) in the
command's process only to launch it. :class:`TemporaryServer` launches the same
server process, with the same command line and environment as Prefect's
``SubprocessASGIServer``, as the command begins, on a socket bound here, and
points this process's Prefect settings at it: the server boots while the
command imports, and the command never imports the server application. The
server stops when the command exits, as Prefect's own does, and on Linux also
when the command is killed (``SIGKILL``, the OOM killer): a few lines of Python
before uvicorn ask the kernel for a ``SIGTERM`` when the command goes
(``PR_SET_PDEATHSIG``).

:func:`shared_api_url` tells flows whether their Prefect server outlives them
(a promotion lock held on a temporary server's limits protects nothing).
tests/unit/test_launch.py compares the command line with Prefect's;
tests/integration/test_prefect_server.py starts real ones.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from mnist_pipeline.errors import PipelineError
from mnist_pipeline.files import database_lock_file, exclusive_lock, sqlite_file

#: Set to the temporary server's API URL in the environment of the command and
#: of the processes it starts (a sweep's Dask workers).
TEMPORARY_API_ENV = "MNIST_PIPELINE_TEMPORARY_PREFECT_API"
#: Seconds a stopped server has to end after SIGTERM before it is killed.
_STOP_GRACE = 5
#: What Prefect's ``SubprocessASGIServer`` sets for its server process (no UI,
#: only the services an ephemeral server runs), and one thing more: no block
#: type registration at start, which imported every installed Prefect
#: collection (prefect-dask: Dask) to hash the block registry, 0.9 s of the
#: server's 3.9 s start here. A block saved later registers its own type
#: (``Block.save``); a user's setting of either variable wins.
SERVER_ENVIRONMENT = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
    "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
}
#: Runs ``PARENT_PID MODULE ARGS…`` as ``python -m MODULE ARGS…`` that the kernel
#: sends SIGTERM when the thread that started it ends (prctl PR_SET_PDEATHSIG,
#: 1); exits 1 if that parent is already gone. Standalone: the server process
#: needs nothing of this package.
_ENDING_WITH_PARENT = """if True:
    import ctypes, os, runpy, signal, sys
    parent, module = int(sys.argv[1]), sys.argv[2]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, signal.SIGTERM, 0, 0, 0) != 0:
        print("Warning: the temporary Prefect server will outlive a killed command:",
              "prctl(PR_SET_PDEATHSIG):", os.strerror(ctypes.get_errno()),
              file=sys.stderr)
    if os.getppid() != parent:
        sys.exit("the command that started this server has ended")
    del sys.argv[1:3]  # run_module sets sys.argv[0] to the module's file
    runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


class PrefectServerError(PipelineError):
    """The temporary Prefect server did not start."""


def shared_api_url() -> str | None:
    """The Prefect API this process reports to if it outlives the process, else None."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    temporary = os.environ.get(TEMPORARY_API_ENV)
    if not url or (temporary and url.rstrip("/") == temporary.rstrip("/")):
        return None
    return url


def _prefect_log() -> logging.Logger:
    """Prefect's own logger, configured: these lines show as Prefect's did."""
    from prefect.logging import get_logger
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    return get_logger()


def server_command(fd: int) -> list[str]:
    """Prefect's ephemeral server command line, serving the socket ``fd``."""
    import prefect

    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(Path(prefect.__file__).parent.parent),
        "--factory",
        "prefect.server.api.server:create_app",
        "--fd",
        str(fd),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]


def _with_parent_death_signal(command: list[str]) -> list[str]:
    """``command`` (``python -m module …``) ending with the thread that starts it.

    On Linux the kernel sends it ``SIGTERM`` when that thread, or the whole
    process (even killed), ends; elsewhere it is ``command`` as it is.
    """
    if not sys.platform.startswith("linux"):
        return command
    if len(command) < 3 or command[1] != "-m":
        raise ValueError(f"not a `python -m module` command: {command}")
    python, _, module, *args = command
    return [python, "-c", _ENDING_WITH_PARENT, str(os.getpid()), module, *args]


class TemporaryServer:
    """One Prefect server process for this command; :meth:`wait` before a flow.

    :meth:`for_this_process` makes one where a command needs it, :meth:`start`
    launches it (and stops it at exit), :meth:`make_current` points Prefect's
    settings in this process (and its children's environment) at it.
    """

    def __init__(
        self, environment: dict[str, str], timeout: float, database: Path | None
    ) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # uvicorn takes a socket handed over with --fd for a Unix one and never
        # sets TCP_NODELAY on its connections: each answer (headers and body
        # sent apart) then waited ~40 ms for a delayed ACK. Accepted sockets
        # inherit the option from this one.
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self._environment = environment
        self._timeout = timeout
        self._database = database
        self._process: subprocess.Popen | None = None
        self._stopped = False
        self._guard = threading.Lock()
        self._failure: str | None = "its start-up thread ended unexpectedly"
        self._booted = threading.Event()  # started or failed: _failure says
        self._released = threading.Event()  # stop() is done with the process
        self._thread = threading.Thread(
            target=self._boot, name="prefect-server-start", daemon=True
        )

    @classmethod
    def for_this_process(cls) -> TemporaryServer | None:
        """One to :meth:`start`, unless a Prefect API is configured or
        ephemeral servers are turned off."""
        from prefect.settings import get_current_settings

        settings = get_current_settings()
        if settings.api.url or not settings.server.ephemeral.enabled:
            return None
        environment = {
            **os.environ,
            **SERVER_ENVIRONMENT,
            **settings.to_environment_variables(exclude_unset=True),
        }
        url = settings.server.database.connection_url
        database = sqlite_file(url.get_secret_value() if url else "")
        return cls(
            environment, settings.server.ephemeral.startup_timeout_seconds, database
        )

    def start(self) -> None:
        """Launch the server in the background, to be stopped at exit.

        :meth:`wait` for it before the first flow.
        """
        atexit.register(self.stop)
        _prefect_log().info(
            "Starting temporary server on http://127.0.0.1:%d\nSee "
            "https://www.prefect.io/docs/v3/concepts/server#how-to-guides for "
            "more information on running a dedicated Prefect server.",
            self.port,
        )
        self._thread.start()

    def make_current(self) -> None:
        """Point Prefect's settings in this process, and the environment of the
        processes it starts, at this server."""
        from prefect.context import refresh_global_settings_context

        os.environ[TEMPORARY_API_ENV] = self.api_url
        os.environ["PREFECT_API_URL"] = self.api_url
        # No "View at" links into a UI the server does not serve and that would
        # be gone with the command anyway.
        os.environ["PREFECT_UI_URL"] = ""
        refresh_global_settings_context()

    @property
    def pid(self) -> int | None:
        """Its process's id while it has one."""
        process = self._process
        return None if process is None else process.pid

    @property
    def running(self) -> bool:
        """Whether its process is alive."""
        process = self._process
        return process is not None and process.poll() is None

    def _boot(self) -> None:
        try:
            self._launch()
        finally:
            self._booted.set()
        if self._failure is None:
            # The server is started from this thread and ends with it (see
            # _with_parent_death_signal): the thread lives until stop().
            self._released.wait()

    def _launch(self) -> None:
        # Each temporary server migrates its SQLite database as it starts: two
        # commands starting together on a new one (two schedules firing at once)
        # raced, and the loser's server died with "index … already exists".
        # The lock is held until this server answers or is gone.
        lock = (
            exclusive_lock(
                database_lock_file(self._database),
                self._timeout,
                on_wait=lambda: _prefect_log().info(
                    "Waiting for another command's temporary server to set up "
                    "its database %s",
                    self._database,
                ),
            )
            if self._database is not None
            else contextlib.nullcontext()
        )
        try:
            with lock:
                fd = self._socket.fileno()
                with self._guard:
                    if self._stopped:
                        self._failure = "the command ended before it started"
                        return
                    process = self._process = subprocess.Popen(
                        _with_parent_death_signal(server_command(fd)),
                        env=self._environment,
                        pass_fds=(fd,),
                    )
                self._failure = self._await_health()
                if self._failure is not None:
                    self._end_before_unlock(process)
        except TimeoutError as exc:
            self._failure = f"another command held its database lock ({exc})"
        except Exception as exc:  # noqa: BLE001 - in the boot thread: wait() reports it
            self._failure = f"could not start it: {exc}"
            self._end_before_unlock(self._process)
        finally:
            self._socket.close()

    def _end_before_unlock(self, process: subprocess.Popen | None) -> None:
        # A server stopped while it boots may still be migrating its database
        # (uvicorn finishes its start-up before it honours SIGTERM): the lock is
        # released only once the process is gone.
        with self._guard:
            stopping = self._stopped
        if not stopping:
            self._end(process)
        elif process is not None:  # stop() sends the one SIGTERM (or a kill)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=_STOP_GRACE + 5)

    def _await_health(self) -> str | None:
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            process = self._process
            if self._stopped or process is None:
                return "it was stopped"
            code = process.poll()
            if code is not None:
                return f"its process exited with code {code} (its errors are above)"
            with contextlib.suppress(OSError, http.client.HTTPException):
                connection = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=5
                )
                try:
                    connection.request("GET", "/api/health")
                    if connection.getresponse().status == 200:
                        return None
                finally:
                    connection.close()
            time.sleep(0.05)
        return (
            f"it did not answer within {self._timeout:g} s "
            "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)"
        )

    def wait(self) -> None:
        """Block until the server answers.

        Raises:
            PrefectServerError: the server did not start, with why.
        """
        if self._thread.ident is None:
            raise RuntimeError("wait() for a server that was not start()ed")
        self._booted.wait()
        if self._failure is not None:
            raise PrefectServerError(
                f"Prefect's temporary server on port {self.port} did not start: "
                f"{self._failure}. Start one with `prefect server start` and set "
                "PREFECT_API_URL to use it instead."
            )

    def stop(self) -> None:
        """Stop the server process (also at exit); wait for it at most 5 s."""
        with self._guard:
            self._stopped = True
            process = self._process
        try:
            if process is None or process.poll() is not None:
                return
            _prefect_log().info(
                "Stopping temporary server on http://127.0.0.1:%d", self.port
            )
            self._end(process)
        finally:
            self._released.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _end(self, process: subprocess.Popen | None) -> None:
        """Terminate ``process``; kill it if it has not ended within 5 s."""
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=_STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
