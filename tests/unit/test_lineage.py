"""A training's key and code version; where the running code came from."""

from __future__ import annotations

import re
import sys

from mnist_pipeline import lineage


def test_the_code_version_is_a_stable_short_digest():
    assert re.fullmatch(r"[0-9a-f]{12}", lineage.code_version())
    assert lineage.code_version.__wrapped__() == lineage.code_version()


def test_the_code_version_follows_the_training_code(tmp_path, monkeypatch):
    module = tmp_path / "scratch_training_code.py"
    module.write_text("EPOCHS = 10\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(lineage, "TRAINING_CODE", ("scratch_training_code",))
    before = lineage.code_version.__wrapped__()
    module.write_text("EPOCHS = 11\n")
    assert lineage.code_version.__wrapped__() != before
    assert "scratch_training_code" not in sys.modules  # read, never imported


def test_the_code_version_follows_the_libraries(monkeypatch):
    before = lineage.code_version.__wrapped__()
    monkeypatch.setattr(
        lineage, "TRAINING_LIBRARIES", (*lineage.TRAINING_LIBRARIES, ("pytest",))
    )
    assert lineage.code_version.__wrapped__() != before


def test_the_training_key_names_data_settings_and_code():
    params = {"epochs": 10, "seed": 0}
    key = lineage.training_key(params, "data1", "code1")
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    assert lineage.training_key(dict(params), "data1", "code1") == key
    assert lineage.training_key(params, "data2", "code1") != key
    assert lineage.training_key(params, "data1", "code2") != key
    assert lineage.training_key({"epochs": 11, "seed": 0}, "data1", "code1") != key
    assert lineage.training_key(params, "data1") == lineage.training_key(
        params, "data1", lineage.code_version()
    )


def test_the_source_names_the_checkout_and_the_lock_file():
    source = lineage.source()
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", source["git_commit"])
    assert re.fullmatch(r"[0-9a-f]{12}", source["lock_digest"])
    assert source["package_version"] == "0.1.0"


def test_outside_a_checkout_there_is_no_commit(tmp_path):
    assert lineage._git_commit(tmp_path) == ""
