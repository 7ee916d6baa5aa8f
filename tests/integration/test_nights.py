"""A year of nights in minutes: unchanged nights, overlaps and registry faults.

The module runs ``mlflow server`` on a free loopback port behind a proxy that
injects faults (error answers, dropped connections), and the training flow
in-process against it and the session's Prefect server. Each test uses its own
registered model and experiment.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

import tasks.gate
from flows.maintenance import prune_outputs
from flows.training import TrainingResult, mnist_training
from mnist_pipeline import alias_history, lineage, tracking_store
from mnist_pipeline.config import PruneConfig, TrainConfig
from mnist_pipeline.data import load_sample, stratified_subset
from tasks.locking import promotion_lock

from .servers import FaultProxy, mlflow_server

TEST_IMAGES = 100


@pytest.fixture(scope="module")
def proxy(tmp_path_factory) -> Iterator[FaultProxy]:
    root = tmp_path_factory.mktemp("nights-mlflow")
    with mlflow_server(root) as upstream, FaultProxy(upstream) as proxy:
        yield proxy


@pytest.fixture
def server(proxy, prefect_api_url, monkeypatch, tmp_path) -> FaultProxy:
    """Track through the proxy; MLflow's own retries short (faults are final)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    yield proxy
    proxy.heal()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """Training sets that differ (train subsets), one fixed test split."""
    folder = tmp_path_factory.mktemp("nights-data")
    sample = load_sample()
    fixed = stratified_subset(sample, None, TEST_IMAGES, 0)
    paths = {}
    for name, seed in (("a", 0), ("b", 1), ("c", 2), ("big", 3)):
        size = 1000 if name == "big" else 300
        train = stratified_subset(sample, size, None, seed)
        path = folder / f"nights-{name}.npz"
        np.savez(
            path,
            x_train=train.x_train,
            y_train=train.y_train,
            x_test=fixed.x_test,
            y_test=fixed.y_test,
        )
        paths[name] = path
    return paths


def night(tmp_path: Path, data: Path, model: str, **settings) -> TrainConfig:
    """A nightly run's config on tiny data: one quick epoch, lenient floors."""
    values = {
        "data": str(data),
        "epochs": 1,
        "batch_size": 50,
        "model_name": model,
        "experiment": model,
        "min_accuracy": 0.0,
        "min_robust_accuracy": 0.0,
        "workdir": str(tmp_path / "outputs"),
        "promotion_timeout": 300.0,
    }
    return TrainConfig(**(values | settings))


def versions(client, model: str) -> dict[str, dict[str, str]]:
    found = client.search_model_versions(f"name = '{model}'")
    return {str(v.version): dict(v.tags) for v in found}


def aliases(client, model: str) -> dict[str, str]:
    return dict(client.get_registered_model(model).aliases)


def run_count(client, model: str) -> int:
    experiment = client.get_experiment_by_name(model)
    return len(client.search_runs([experiment.experiment_id])) if experiment else 0


# Four trainings and a prune (~2.5 min on 2 cores): CI runs it with -m slow. The
# default run keeps the unchanged re-run itself (test_flow's first test).
@pytest.mark.slow
def test_an_unchanged_night_trains_and_registers_nothing(server, datasets, tmp_path):
    model = "unchanged"
    first = mnist_training(night(tmp_path, datasets["a"], model))
    assert first.promoted and not first.skipped
    client = tracking_store.connect()
    runs, before = run_count(client, model), versions(client, model)

    again = mnist_training(night(tmp_path, datasets["a"], model))
    assert again.skipped and again.version == first.version == "1"
    assert versions(client, model) == before
    assert aliases(client, model) == {"champion": "1", "challenger": "1"}
    assert run_count(client, model) == runs, "a skipped night opened an MLflow run"
    summary = asyncio.run(_summary(again))
    assert "nothing to train" in summary and f"[{model} version 1](" in summary

    changed = mnist_training(night(tmp_path, datasets["a"], model, seed=1))
    assert not changed.skipped and changed.version == "2"
    data = mnist_training(night(tmp_path, datasets["b"], model))
    assert not data.skipped and data.version == "3"

    # Forced: the same training as v1 again (deterministic here), never promoted
    # over an equal or better champion.
    champion = aliases(client, model)["champion"]
    forced = mnist_training(night(tmp_path, datasets["a"], model, retrain=True))
    assert not forced.skipped and forced.version == "4"
    tags = versions(client, model)
    assert tags["4"]["test_correct"] == tags["1"]["test_correct"]
    assert tags["4"]["training_key"] == tags["1"]["training_key"]
    assert not forced.promoted
    assert tags["4"]["gate.compared_with"] == f"v{champion}"
    assert aliases(client, model)["champion"] == champion

    # What the nights left: prune lists the local models of versions that are
    # neither @champion, @challenger nor the last one, and removes only those.
    runs = {v: client.get_model_version(model, v).run_id for v in tags}
    keep = {runs[champion], runs["4"]}
    config = PruneConfig(
        workdir=str(tmp_path / "outputs"), model_name=model, keep_versions=1
    )
    plan = prune_outputs(config.model_copy(update={"older_than_days": 0}))
    models = {Path(p).name for p, _, _ in plan.removals if "/models/" in p}
    assert models == set(runs.values()) - keep
    assert not plan.applied and all(Path(p).exists() for p, _, _ in plan.removals)
    prune_outputs(config.model_copy(update={"older_than_days": 0, "apply": True}))
    left = {p.name for p in (tmp_path / "outputs" / "models").iterdir()}
    assert left == keep


def test_a_registry_error_during_the_gate_fails_closed(server, datasets, tmp_path):
    model = "faulty"
    mnist_training(night(tmp_path, datasets["a"], model))
    client = tracking_store.connect()
    assert aliases(client, model)["champion"] == "1"

    # Once v2 is registered (@challenger set), the registry answers 500 to the
    # champion read: no "no champion" default, no promotion.
    fault = server.fail(
        "/registered-models/alias", method="GET", after="POST /registered-models/alias"
    )
    with pytest.raises(Exception, match="500|INTERNAL_ERROR|too many"):
        mnist_training(night(tmp_path, datasets["b"], model))
    assert fault.hits >= 4, "the gate retried before failing"
    server.heal()
    assert aliases(client, model) == {"champion": "1", "challenger": "2"}
    tags = versions(client, model)["2"]
    assert tags["gate.decision"] == "error"
    assert "500" in tags["gate.reason"] or "INTERNAL_ERROR" in tags["gate.reason"]
    experiment = client.get_experiment_by_name(model).experiment_id
    failed = client.search_runs([experiment], "attributes.status = 'FAILED'")
    assert len(failed) == 1 and "failure_reason" in failed[0].data.tags

    # The next night on the same training finishes that gate instead of training.
    resumed = mnist_training(night(tmp_path, datasets["b"], model))
    assert resumed.skipped and resumed.version == "2"
    tags = versions(client, model)["2"]
    assert tags["gate.decision"] in ("promoted", "rejected")
    assert tags["gate.compared_with"] == "v1"
    assert sorted(versions(client, model)) == ["1", "2"]


@pytest.mark.slow  # an overlap scenario of whole runs: CI runs it (-m slow)
def test_overlapping_runs_promote_the_better_one_in_either_order(
    server, datasets, tmp_path, monkeypatch
):
    better = {"learning_rate": 0.01, "batch_size": 32, "epochs": 2}
    worse = {"learning_rate": 1e-5, "batch_size": 32, "epochs": 2}
    orders = set()
    # Both runs start together and overlap; which one reaches the promotion
    # lock first is set, not left to timing (a head start of the first thread's
    # imports once made the slower run arrive first).
    for model, first_settings, second_settings in (
        ("overlap-worse-first", worse, better),
        ("overlap-better-first", better, worse),
    ):
        first_done = _first_to_the_lock(monkeypatch, "-seed1-")
        runs = _together(
            night(tmp_path, datasets["big"], model, seed=1, **first_settings),
            night(tmp_path, datasets["big"], model, seed=2, **second_settings),
            on_first_end=first_done,
        )
        failed = [r for r in runs if isinstance(r, Exception)]
        assert not failed, f"an overlapping run failed: {failed!r}"
        client = tracking_store.connect()
        tags = versions(client, model)
        by_lr = {
            float(client.get_run(r.run_id).data.params["learning_rate"]): r
            for r in runs
        }
        good, bad = by_lr[0.01], by_lr[1e-5]
        assert good.test_accuracy > bad.test_accuracy + 0.2
        assert aliases(client, model)["champion"] == good.version
        first, second = sorted(
            runs, key=lambda r: tags[r.version]["gate.compared_with"]
        )
        assert tags[first.version]["gate.compared_with"] == "none"
        assert tags[second.version]["gate.compared_with"] == f"v{first.version}"
        assert first is runs[0], "the seed-1 run was to reach the lock first"
        # Each promotion is in the alias's history once, in order.
        promoted = [first.version] + ([second.version] if second is good else [])
        moves = alias_history.read_moves(client, model)
        assert [(m.by, m.to_version, m.done) for m in moves] == [
            ("gate", version, True) for version in promoted
        ]
        assert {m.mlflow_run for m in moves} <= {r.run_id for r in runs}
        orders.add("better first" if first is good else "worse first")
    assert orders == {"better first", "worse first"}


def _first_to_the_lock(
    monkeypatch: pytest.MonkeyPatch, first: str
) -> Callable[[], None]:
    """The run whose flow-run name holds ``first`` takes the promotion lock first.

    The other run waits until that one holds the real lock, then asks for it
    too, so it waits on the lock while the first one promotes. Returns what to
    call when the first run ends: one that failed before the lock then lets the
    other go on instead of keeping it waiting (the test names the failure).
    """
    holding = threading.Event()

    @contextmanager
    def ordered(model_name: str, tracking_uri: str, timeout: float):
        name = flow_run.name or ""
        assert "-seed" in name, f"no seed in the flow run's name {name!r}"
        is_first = first in name
        if not is_first and not holding.wait(timeout=300):
            raise RuntimeError(f"the {first} run never took the promotion lock")
        with promotion_lock(model_name, tracking_uri, timeout) as held:
            if is_first:
                holding.set()
            yield held

    monkeypatch.setattr(tasks.gate, "promotion_lock", ordered)
    return holding.set


def test_the_promotion_lock_admits_one_holder_at_a_time(prefect_api_url):
    spans: list[tuple[float, float]] = []

    def hold() -> None:
        with promotion_lock("lock-test", "http://127.0.0.1:1", timeout=60) as held:
            assert held == [
                "Prefect global concurrency limit mnist-promotion-lock-test"
            ]
            start = time.monotonic()
            time.sleep(0.5)
            spans.append((start, time.monotonic()))

    _in_threads([hold, hold, hold])
    spans.sort()
    assert len(spans) == 3
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"two holders at once: {spans}"


@dataclass
class Night:
    """One night of the soak: what ran and what was injected."""

    data: str
    seed: int = 0
    fault: dict | None = None  # FaultProxy.fail's arguments
    twice: bool = False  # two runs of this config started together
    beside: tuple[str, int] | None = None  # another config started together


#: After a version is registered (@challenger set), the next matching request.
AFTER_REGISTER = "POST /registered-models/alias"
SOAK = [
    Night("a"),  # the first champion
    Night("a"),  # unchanged: nothing trained
    Night("b"),  # new data
    Night("b"),
    # A refused champion read: the gate fails closed, the version says why.
    Night(
        "c",
        fault={"path": "/registered-models/alias", "status": 403, "method": "GET"}
        | {"after": AFTER_REGISTER},
    ),
    Night("c"),  # finishes that gate, trains nothing
    Night("a", seed=1, twice=True),  # a manual run beside the nightly
    Night("a", seed=1),
    Night("b", seed=1, beside=("c", 1)),  # two trainings overlap
    Night("b", seed=1),
    Night("c", seed=1),
    # The registry unreachable before anything starts: nothing happens.
    Night("a", seed=2, fault={"path": "/model-versions/search", "status": 403}),
    Night("a", seed=2),
    Night("a", seed=2),
    # The server gone between registering and gating: no verdict recorded.
    Night("b", seed=2, fault={"path": "/", "drop": True, "after": AFTER_REGISTER}),
    Night("b", seed=2),  # gates it now
    Night("a"),
    Night("c", seed=2),
    Night("c", seed=2, twice=True),
    Night("b"),
]


@pytest.mark.slow
def test_a_soak_of_nights_keeps_the_registry_truthful(
    server, datasets, tmp_path, capsys
):
    model = "soak"
    client = tracking_store.connect()
    max_p = night(tmp_path, datasets["a"], model).max_p_value
    counts = dict(nights=0, trained=0, skipped=0, faults=0, promotions=0)
    violations: list[str] = []
    best = 0  # correct test images of the best champion so far
    for number, plan in enumerate(SOAK, start=1):
        before = versions(client, model) if number > 1 else {}
        champion_before = aliases(client, model).get("champion") if before else None
        results = _run_night(plan, server, datasets, tmp_path, model)
        counts["nights"] += 1
        done = [r for r in results if isinstance(r, TrainingResult)]
        counts["faults"] += len(results) - len(done)
        counts["skipped"] += sum(r.skipped for r in done)
        counts["trained"] += sum(not r.skipped for r in done)

        after = versions(client, model)
        champion = aliases(client, model).get("champion")
        if done and all(r.skipped for r in done) and len(after) != len(before):
            violations.append(f"night {number}: an unchanged night added a version")
        if champion != champion_before:
            counts["promotions"] += 1
            replaced = before.get(champion_before) if champion_before else None
            violations += _unearned(
                number, after[champion], champion_before, replaced, max_p
            )
        if champion is not None:
            correct = _correct(after[champion])
            if correct < best:
                violations.append(f"night {number}: champion fell to {correct} right")
            best = max(best, correct)

    final = versions(client, model)
    violations += _untraceable(final)
    violations += _history_breaks(client, model, counts["promotions"])
    kept, mislabelled = _kept_for_lack_of_evidence(client, model, max_p)
    violations += mislabelled
    counts["versions"] = len(final)
    counts["no_evidence"] = len(kept)
    with capsys.disabled():
        print("\n" + _soak_table(counts, len(violations)))
        print(_paired_line(final))
    assert counts["nights"] >= 20 and counts["faults"] >= 3
    assert counts["skipped"] >= 8 and counts["promotions"] >= 1
    assert violations == []


def _history_breaks(client, model: str, promotions: int) -> list[str]:
    """Where the alias's history disagrees with the registry: a move from a
    version other than the one before, a champion it does not end on, fewer
    moves than the nights saw."""
    moves = [m for m in alias_history.read_moves(client, model) if m.done]
    breaks = [
        f"history #{m.seq}: from v{m.from_version}, but v{before.to_version} was "
        "champion"
        for before, m in zip(moves, moves[1:], strict=False)
        if m.from_version != before.to_version
    ]
    champion = aliases(client, model).get("champion")
    if moves and moves[-1].to_version != champion:
        breaks.append(f"history ends on v{moves[-1].to_version}, not v{champion}")
    if len(moves) < promotions:
        breaks.append(f"history has {len(moves)} moves for {promotions} promotions")
    return breaks


def _run_night(
    plan: Night, server: FaultProxy, datasets: dict[str, Path], tmp_path, model
) -> list[TrainingResult | Exception]:
    if plan.fault:
        server.fail(**plan.fault)
    try:
        config = night(tmp_path, datasets[plan.data], model, seed=plan.seed)
        if plan.twice:
            return _together(config, config)
        if plan.beside:
            other, seed = plan.beside
            return _together(config, night(tmp_path, datasets[other], model, seed=seed))
        return [_try(config)]
    finally:
        server.heal()


def _unearned(
    number: int,
    tags: dict[str, str],
    previous: str | None,
    previous_tags: dict[str, str] | None,
    max_p: float,
) -> list[str]:
    """A promotion without a comparison to the champion it replaced, or over a
    champion without a significant gain (McNemar's p above ``max_p``, or counts
    that do not add up to the two versions' test_correct)."""
    expected = f"v{previous}" if previous else "none"
    compared = tags.get("gate.compared_with")
    if tags.get("gate.decision") != "promoted" or compared != expected:
        return [
            f"night {number}: promoted without comparison to {expected} ({compared})"
        ]
    if previous is None:
        return []
    p_value = tags.get("gate.p_value")
    c, b = tags.get("gate.only_candidate_right"), tags.get("gate.only_champion_right")
    if p_value is None or c is None or b is None:
        return [f"night {number}: promoted over v{previous} with no paired test"]
    gain = _correct(tags) - _correct(previous_tags or {})
    if float(p_value) > max_p or int(c) <= int(b) or int(c) - int(b) != gain:
        return [
            f"night {number}: promoted over v{previous} on c={c}, b={b}, "
            f"p = {p_value} (allowed {max_p}), {gain} more right"
        ]
    return []


def _correct(tags: dict[str, str]) -> int:
    return int(tags.get("test_correct", "-1/0").split("/")[0])


def _kept_for_lack_of_evidence(
    client, model: str, max_p: float
) -> tuple[list[str], list[str]]:
    """The versions whose verdict says they were kept only for lack of evidence,
    and where that verdict disagrees with the run's ``gate/decision.json``
    (its only failed check ``significant_improvement``, p above ``max_p``)."""
    kept, problems = [], []
    for found in client.search_model_versions(f"name = '{model}'"):
        tags, version = found.tags, found.version
        said = "not a significant improvement" in tags.get("gate.reason", "")
        if said:
            kept.append(version)
        if tags.get("gate.decision") != "rejected":
            continue
        record = mlflow.artifacts.load_dict(f"runs:/{found.run_id}/gate/decision.json")
        failed = {c["name"] for c in record["checks"] if not c["passed"]}
        recorded = failed == {"significant_improvement"}
        if said != recorded:
            problems.append(f"v{version}: verdict {said}, decision.json {failed}")
        elif recorded and not (
            record["paired_test"]["p_value"] > max_p
            and float(tags["gate.p_value"]) > max_p
        ):
            problems.append(f"v{version}: kept for lack of evidence at p <= {max_p}")
    return kept, problems


def _untraceable(final: dict[str, dict[str, str]]) -> list[str]:
    """Versions that do not name their Prefect run and code, or never got a verdict."""
    ids = [t.get("prefect.flow_run_id", "") for t in final.values()]
    known = asyncio.run(_flow_runs(ids))
    problems = []
    for version, tags in final.items():
        if tags.get("code_version") != lineage.code_version():
            problems.append(f"v{version}: no code version")
        if tags.get("prefect.flow_run_id") not in known:
            problems.append(f"v{version}: its Prefect flow run is unknown")
        if tags.get("gate.decision") not in ("promoted", "rejected"):
            problems.append(f"v{version}: no verdict ({tags.get('gate.decision')})")
    return problems


def _soak_table(counts: dict[str, int], violations: int) -> str:
    header = (
        "| nights | flow runs trained | skipped | failed (faults) | versions "
        "| promotions | kept for lack of evidence | invariant violations |"
    )
    row = (
        f"| {counts['nights']} | {counts['trained']} | {counts['skipped']} | "
        f"{counts['faults']} | {counts['versions']} | {counts['promotions']} | "
        f"{counts['no_evidence']} | {violations} |"
    )
    return "\n".join([header, "|" + "---|" * 8, row])


def _paired_line(final: dict[str, dict[str, str]]) -> str:
    """Each paired test's figures, e.g. ``v2 rejected c=16 b=8 p=0.076``."""
    tested = sorted((int(v), t) for v, t in final.items() if "gate.p_value" in t)
    figures = [
        f"v{v} {t['gate.decision']} c={t['gate.only_candidate_right']} "
        f"b={t['gate.only_champion_right']} p={float(t['gate.p_value']):.2g}"
        for v, t in tested
    ]
    return "paired tests against @champion: " + ("; ".join(figures) or "none")


def _try(config: TrainConfig) -> TrainingResult | Exception:
    try:
        return mnist_training(config)
    except Exception as exc:  # noqa: BLE001 - an injected fault; counted
        return exc


def _together(
    *configs: TrainConfig, on_first_end: Callable[[], None] | None = None
) -> list[TrainingResult | Exception]:
    """Run the flows at the same time, in threads; their results in order.

    ``on_first_end`` is called when the first config's run has ended.
    """
    results: list[TrainingResult | Exception | None] = [None] * len(configs)

    def runner(index: int, config: TrainConfig) -> Callable[[], None]:
        def run() -> None:
            try:
                results[index] = _try(config)
            finally:
                if index == 0 and on_first_end is not None:
                    on_first_end()

        return run

    _in_threads([runner(i, c) for i, c in enumerate(configs)])
    return [r for r in results if r is not None]


def _in_threads(functions: list[Callable[[], None]]) -> None:
    # Each thread gets this context (the test's Prefect settings), its own copy.
    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(f,))
        for f in functions
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)


async def _summary(result: TrainingResult) -> str:
    async with get_client() as client:
        artifacts = await client.read_artifacts()
    latest = max(
        (a for a in artifacts if a.key == "mnist-training-summary"),
        key=lambda a: a.created,
    )
    return latest.data


async def _flow_runs(ids: list[str]) -> set[str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids))
        )
    return {str(r.id) for r in runs}
