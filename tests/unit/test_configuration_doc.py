"""docs/configuration.md lists every field of every config model, no more."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mnist_pipeline import config

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
#: A field row: | `name` | default | allowed | description |
ROW = re.compile(r"^\| `(\w+)` \| ([^|]*) \|")


def _tables() -> dict[tuple[str, ...], dict[str, str]]:
    """The field tables by the config models their heading names."""
    tables: dict[tuple[str, ...], dict[str, str]] = {}
    models: tuple[str, ...] = ()
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            models = tuple(re.findall(r"`(\w+Config|SweepGrid)`", line))
        elif models and (row := ROW.match(line)):
            tables.setdefault(models, {})[row.group(1)] = row.group(2).strip()
    return tables


TABLES = _tables()


@pytest.mark.parametrize("models", sorted(TABLES), ids="+".join)
def test_each_table_lists_exactly_its_models_fields(models):
    fields = {
        name: field
        for model in models
        for name, field in getattr(config, model).model_fields.items()
    }
    assert set(TABLES[models]) == set(fields)
    for name, field in fields.items():
        default = field.get_default(call_default_factory=False)
        if isinstance(default, int | float | str) and not isinstance(default, bool):
            if str(default) and "Keras" not in TABLES[models][name]:
                assert TABLES[models][name] == f"`{default}`", name


def test_every_command_config_has_a_table():
    documented = {model for models in TABLES for model in models}
    assert {
        "TrainConfig",
        "SweepConfig",
        "SweepGrid",
        "PredictConfig",
        "ServeConfig",
        "PromoteConfig",
        "RollbackConfig",
        "HistoryConfig",
        "PruneConfig",
    } <= documented
