"""One command's flow run as a process: environment, signals, server, last lines.

The entry points (``mnist-pipeline`` commands) create a :class:`Launch` before
they import a flow, run the flow through it and print their result through it.
"""

from __future__ import annotations

import atexit
import gc
import signal
from collections.abc import Callable

from mnist_pipeline.prefect_server import TemporaryServer
from mnist_pipeline.runtime import configure_environment, quiet_tensorflow_import


class Launch:
    """A flow run's process set-up: the final-lines printer and the flow call.

    Create it before importing a flow: the environment defaults must be set
    before Prefect and TensorFlow load.
    """

    def __init__(self, echo: Callable[[str], None]) -> None:
        configure_environment()
        quiet_tensorflow_import()
        exit_cleanly_on_sigterm()
        defer_garbage_collection()
        self._server = TemporaryServer.for_this_process()
        self.report = final_report(echo, self._server is not None)
        if self._server is not None:
            # After the report's exit hook: the server's stop runs before it.
            self._server.start()
            self._server.make_current()

    def run(self, flow, **parameters):
        """Run a flow once the temporary server (if any) answers."""
        collect_imports()  # while the server boots
        if self._server is not None:
            self._server.wait()
        return flow(**parameters)


def defer_garbage_collection() -> None:
    """No cyclic garbage collection while the flow's modules import, nor at exit.

    A command imports TensorFlow, Keras, MLflow and Prefect: about 900,000
    objects that live until it exits. Python's collector walked all of them ten
    times in a training run (1.4 s on 2 cores), and once more as the
    interpreter shut down (about 2 s after the last line was printed).
    :func:`collect_imports` collects once after the imports and freezes what is
    left (``gc.freeze``: later collections skip it); the exit hook registered
    here, which runs after the others, freezes everything again so that the
    interpreter's shutdown does not walk it. Objects are still freed by
    reference counting; objects in reference cycles at exit are not collected,
    so their finalizers (``__del__``) do not run: the command's own files are
    written atomically and closed, and MLflow's and Prefect's clients flush in
    their exit hooks, which run before this one. Only the CLI's entry points
    call this (a test that does leaves one more exit hook in its process).
    """
    gc.disable()
    atexit.register(gc.freeze)


def collect_imports() -> None:
    """Collect once, freeze the survivors (the imported modules), re-enable GC."""
    gc.collect()
    gc.freeze()
    gc.enable()


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


def final_report(
    echo: Callable[[str], None], temporary_server: bool
) -> Callable[..., None]:
    """A printer for the lines that must close the command's output.

    A temporary Prefect server logs its shutdown at interpreter exit; printing
    from an exit hook registered after the server's (hooks run last-in,
    first-out) keeps the result lines last.
    """

    def print_all(lines: list[str]) -> None:
        for line in lines:
            echo(line)

    if not temporary_server:
        return lambda *lines: print_all(list(lines))
    pending: list[str] = []
    atexit.register(print_all, pending)
    return lambda *lines: pending.extend(lines)
