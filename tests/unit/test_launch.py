"""The Prefect internals the early start of the temporary server relies on.

Prefect has no public API to start its temporary server ahead of the first
client call. ``mnist_pipeline.launch`` starts the instance the clients use; if
a Prefect upgrade changes how they find it, these tests fail (the run would
still work, only later: the flow starts the server itself).
"""

from __future__ import annotations

import inspect

from mnist_pipeline.launch import temporary_server


def test_the_clients_share_one_default_server_instance():
    from prefect.server.api.server import SubprocessASGIServer

    server = temporary_server()
    assert server is SubprocessASGIServer() is SubprocessASGIServer(None)
    assert not inspect.signature(server.start).parameters.keys() - {"timeout"}
    assert callable(server.stop)


def test_prefects_client_starts_that_default_instance():
    from prefect.client import orchestration

    source = inspect.getsource(orchestration.get_client)
    assert "SubprocessASGIServer()" in source
    assert "server.start()" in source
