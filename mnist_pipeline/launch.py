"""One command's flow run as a process: environment, signals, server, last lines.

The entry points (``mnist-pipeline`` commands) create a :class:`Launch` before
they import a flow, run the flow through it and print their result through it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import threading
from collections.abc import Callable

from mnist_pipeline.files import database_lock, sqlite_file
from mnist_pipeline.runtime import configure_environment

log = logging.getLogger(__name__)


class Launch:
    """A flow run's process set-up: the final-lines printer and the flow call.

    Create it before importing a flow: the environment defaults must be set
    before Prefect and TensorFlow load.
    """

    def __init__(self, echo: Callable[[str], None]) -> None:
        configure_environment()
        exit_cleanly_on_sigterm()
        self.report = final_report(echo)
        self._server = start_temporary_server()

    def run(self, flow, **parameters):
        """Run a flow once the temporary server (if any) has had its start."""
        if self._server is not None:
            self._server.join()
        return flow(**parameters)


def exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a container stop) exit through the exit hooks.

    Python's default SIGTERM action ends the process at once, skipping them, and
    so left Prefect's temporary server running after the command was gone.
    Prefect's flow engine turns SIGTERM into a crash of the flow run, then
    re-sends the signal to the handler found here: the process then exits with
    the conventional code 143, after stopping the server.
    """

    def exit_143(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_143)


def temporary_server():
    """The temporary server Prefect's clients use in this process, or None.

    Prefect has no public API for it: its clients (``get_client``, the events
    and logs clients) start ``SubprocessASGIServer()``, one instance per port,
    the default one under ``None``. tests/unit/test_launch.py checks those
    internals, so a Prefect upgrade that changes them fails a test; if they are
    gone at run time the flow still runs and starts the server itself, later.
    """
    try:
        from prefect.server.api.server import SubprocessASGIServer
    except ImportError:  # pragma: no cover - guarded by tests/unit/test_launch.py
        log.debug("Prefect has no SubprocessASGIServer; no early server start")
        return None
    return SubprocessASGIServer()


def start_temporary_server() -> threading.Thread | None:
    """Start Prefect's temporary server while the flow's modules import.

    Without ``PREFECT_API_URL`` Prefect starts a temporary server at the flow's
    first API call, after the flow's modules (TensorFlow, MLflow) have imported:
    on 2 cores the two took about 15 s and 10 s one after the other. Started
    here, the server boots in its own process meanwhile. The same instance
    serves the flow (Prefect keeps one per process); if this start fails, the
    flow's first API call starts it again and reports why.
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    server = temporary_server()
    if server is None:
        return None
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # its "Starting temporary server" line is logged
    url = settings.server.database.connection_url
    database = sqlite_file(url.get_secret_value() if url else "")

    # Each temporary server migrates a SQLite database as it starts: two runs
    # starting together on a new one (two schedules firing at once) raced, and
    # the loser's server died with "index … already exists" and a traceback.
    lock = database_lock(database) if database else contextlib.nullcontext()

    def start() -> None:
        try:
            with lock:
                server.start()
        except Exception:  # noqa: BLE001 - the flow's own start reports it
            log.debug("Early start of the temporary server failed", exc_info=True)

    thread = threading.Thread(target=start, name="prefect-server-start", daemon=True)
    thread.start()
    return thread


def final_report(echo: Callable[[str], None]) -> Callable[..., None]:
    """A printer for the lines that must close the command's output.

    Without ``PREFECT_API_URL`` Prefect runs a temporary server that logs its
    shutdown at interpreter exit; printing from an exit hook registered before
    that server starts (hooks run last-in, first-out) keeps the result lines last.
    """
    from prefect.settings import get_current_settings

    def print_all(lines: list[str]) -> None:
        for line in lines:
            echo(line)

    if get_current_settings().api.url:
        return lambda *lines: print_all(list(lines))
    pending: list[str] = []
    atexit.register(print_all, pending)
    return lambda *lines: pending.extend(lines)
