"""MLflow on PostgreSQL, as README.md documents: a real server, a real database.

The module starts PostgreSQL (Debian's binaries) on a free loopback port with
its data in a temporary folder, and ``mlflow server`` on it with proxied
artifacts in a local folder (the stand-in for the S3 bucket). The training flow
then runs against the server, and the test reads what landed in PostgreSQL's
own tables. Everything is stopped and deleted at the end, whatever happened.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.training import mnist_training
from mnist_pipeline import packaging

from .servers import (
    background,
    clean_environment,
    free_port,
    mlflow_server,
    run,
    wait_for,
)
from .test_flow import small_config

START_S = 300
DATABASE = "mlflow"


def _postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)),
        None,
    )
    # Debian links pg_ctl into PATH; initdb and postgres sit beside the target.
    return Path(found).resolve().parent if found else None


@dataclass(frozen=True)
class Backend:
    dsn: str
    mlflow_uri: str
    artifacts: Path


def _database_user() -> str | None:
    """PostgreSQL refuses to run as root: use the ``postgres`` account then."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres").pw_name
    except KeyError:
        pytest.skip("running as root and no 'postgres' user to run PostgreSQL as")


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    """PostgreSQL and ``mlflow server --backend-store-uri postgresql://...``."""
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2-binary missing")
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL binaries not found (pg_ctl on PATH or under "
            "/usr/lib/postgresql/*/bin): apt-get install postgresql; .ci/run does"
        )
    user = _database_user()
    root = Path(tempfile.mkdtemp(prefix="mnist-postgres-"))
    try:
        data, sockets = root / "pgdata", root / "sockets"
        data.mkdir()
        sockets.mkdir()
        if user:
            entry = pwd.getpwnam(user)
            for path in (root, data, sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        env = clean_environment(LC_ALL="C.UTF-8")
        run(
            [bin_dir / "initdb", "-D", data, "-U", DATABASE, "-A", "trust"]
            + ["-E", "UTF8", "--no-sync"],
            cwd=root,
            env=env,
            user=user,
        )
        port = free_port()
        server = f"postgresql://{DATABASE}@127.0.0.1:{port}"
        dsn, admin_dsn = f"{server}/{DATABASE}", f"{server}/postgres"
        with ExitStack() as stack:
            log = root / "postgres.log"
            postgres = stack.enter_context(
                background(
                    [bin_dir / "postgres", "-D", data, "-p", str(port)]
                    + ["-h", "127.0.0.1", "-k", sockets, "-c", "fsync=off"],
                    cwd=root,
                    env=env,
                    log=log,
                    grace=10,
                    user=user,
                )
            )

            def accepts() -> bool:
                try:
                    psycopg2.connect(admin_dsn).close()
                except psycopg2.OperationalError:
                    return False
                return True

            wait_for(
                accepts, timeout=START_S, what="postgres", process=postgres, log=log
            )
            admin = psycopg2.connect(admin_dsn)
            admin.autocommit = True
            with admin.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {DATABASE}")
            admin.close()

            mlflow_uri = stack.enter_context(
                mlflow_server(
                    root,
                    # SQLAlchemy 2.1's plain postgresql:// means psycopg 3.
                    backend=dsn.replace("postgresql", "postgresql+psycopg2"),
                    artifacts=root / "artifacts",
                    timeout=START_S,
                )
            )
            yield Backend(dsn, mlflow_uri, root / "artifacts")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _query(dsn: str, sql: str, *args: object) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute(sql, args)
        rows = cursor.fetchall()
    connection.close()
    return rows


def test_training_flow_records_into_postgresql(
    prefect_api_url, backend, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", backend.mlflow_uri)
    lenient = {"min_accuracy": 0.0, "min_robust_accuracy": 0.0}
    result = mnist_training(
        small_config(tmp_path, train_limit=300, test_limit=100, **lenient)
    )

    ((status, experiment),) = _query(
        backend.dsn,
        "SELECT r.status, e.name FROM runs r JOIN experiments e "
        "ON r.experiment_id = e.experiment_id WHERE r.run_uuid = %s",
        result.run_id,
    )
    assert (status, experiment) == ("FINISHED", "integration")
    ((accuracy,),) = _query(
        backend.dsn,
        "SELECT value FROM latest_metrics WHERE run_uuid = %s AND key = %s",
        result.run_id,
        "test_accuracy",
    )
    assert accuracy == pytest.approx(result.test_accuracy)
    steps = _query(
        backend.dsn,
        "SELECT step FROM metrics WHERE run_uuid = %s AND key = 'val_accuracy'",
        result.run_id,
    )
    assert steps == [(1,)]
    assert _query(
        backend.dsn,
        "SELECT name, version, run_id FROM model_versions",
    ) == [("mnist-cnn", 1, result.run_id)]
    assert _query(
        backend.dsn, "SELECT alias, version FROM registered_model_aliases ORDER BY 1"
    ) == [("challenger", 1), ("champion", 1)]
    # Artifacts went through the server to its artifact store, not to this folder.
    assert list(backend.artifacts.rglob("confusion_matrix.png"))
    assert list(backend.artifacts.rglob("MLmodel"))
    assert not (tmp_path / "mlruns").exists()
    served = packaging.load_pyfunc("models:/mnist-cnn@champion")
    assert served.metadata.run_id == result.run_id
