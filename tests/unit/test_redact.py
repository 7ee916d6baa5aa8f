"""Credentials never reach params, tags, messages or printed links."""

from __future__ import annotations

import pytest

from mnist_pipeline import registry, runs, tracking_store
from mnist_pipeline.redact import redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:s3cret@host/x.npz", "https://user:REDACTED@host/x.npz"),
        ("https://tok3n@host/x.npz", "https://REDACTED@host/x.npz"),
        (
            "https://host/x.npz?X-Amz-Signature=abc&v=2&access_token=t",
            "https://host/x.npz?X-Amz-Signature=REDACTED&v=2&access_token=REDACTED",
        ),
        ("https://host/mnist.npz", "https://host/mnist.npz"),
        ("outputs/data.npz", "outputs/data.npz"),
        ("sample", "sample"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_redact_text_finds_urls_in_messages():
    text = "failed: <urlopen error> for http://bob:hunter2@10.0.0.1:5000/api (retry)"
    assert "hunter2" not in redact_text(text)
    assert "http://bob:REDACTED@10.0.0.1:5000/api" in redact_text(text)


def test_params_and_run_links_are_redacted(mlflow_store):
    client = tracking_store.connect()
    experiment = tracking_store.ensure_experiment(client, "secrets")
    with runs.tracked_run(client, experiment, None, {}) as run_id:
        runs.log_params(
            client, run_id, {"mnist_origin": "https://u:pw@host/m.npz?token=abc"}
        )
    logged = client.get_run(run_id).data.params["mnist_origin"]
    assert logged == "https://u:REDACTED@host/m.npz?token=REDACTED"

    class Remote:
        tracking_uri = "https://admin:pw@mlflow.example"

    link = runs.run_url(Remote(), "1", "abc")
    assert link == (
        "https://admin:REDACTED@mlflow.example/#/experiments/1/runs/abc"
        "?workflowType=machine_learning"
    )
    version = registry.version_url(Remote(), "mnist-cnn", "3")
    assert version == (
        "https://admin:REDACTED@mlflow.example/#/models/mnist-cnn/versions/3"
        "?workflowType=machine_learning"
    )


def test_failure_reason_is_redacted(mlflow_store):
    client = tracking_store.connect()
    experiment = tracking_store.ensure_experiment(client, "secrets")
    with pytest.raises(OSError):
        with runs.tracked_run(client, experiment, None, {}) as run_id:
            raise OSError("cannot reach https://svc:pa55@store/bucket")
    reason = client.get_run(run_id).data.tags["failure_reason"]
    assert "pa55" not in reason and "svc:REDACTED@store" in reason


@pytest.mark.parametrize(
    ("uri", "label"),
    [
        ("models:/mnist-cnn@champion", "champion"),
        ("models:/mnist-cnn/3", "v3"),
        ("https://host/models/model?token=s3cret", "model"),
        ("runs:/abc/model", "model"),
    ],
)
def test_a_run_name_never_carries_a_model_uris_query(uri, label):
    from tasks.lineage import model_label

    assert model_label(uri) == label
