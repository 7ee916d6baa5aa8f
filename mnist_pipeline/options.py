"""Command-line options generated from the pydantic config models.

The config models are the one source of truth for every option: name, type,
default, bounds and help text. :func:`config_options` turns a model's fields
into typer parameters (``--<field-name>`` with dashes), :func:`given` keeps the
values a user actually gave, and :func:`build` validates them on top of a
``--config FILE.yaml`` into the model, one line per invalid option.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import typer
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from mnist_pipeline.errors import PipelineError

#: The ``--config`` option every config-backed command takes.
CONFIG_FILE = inspect.Parameter(
    "config_file",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="A YAML file of this command's config fields (as a deployment's "
            "parameters.config); options given on the command line override it.",
            dir_okay=False,
        ),
    ],
)


def config_options(
    model: type[BaseModel],
    *,
    exclude: Iterable[str] = (),
    aliases: Mapping[str, str] | None = None,
) -> list[inspect.Parameter]:
    """One keyword parameter per field of ``model``, for a typer command.

    Args:
        model: the config model.
        exclude: fields that are not options (set otherwise, or not settable).
        aliases: extra option names, e.g. ``{"model_uri": "--model"}``.
    """
    aliases = aliases or {}
    skipped = set(exclude)
    return [
        _parameter(name, field, aliases.get(name))
        for name, field in model.model_fields.items()
        if name not in skipped
    ]


def _parameter(name: str, field: FieldInfo, alias: str | None) -> inspect.Parameter:
    kind, choices = _option_type(field.annotation)
    flag = "--" + name.replace("_", "-")
    declarations = [flag] if kind is not bool else [f"{flag}/--no-{flag[2:]}"]
    if alias:
        declarations.append(alias)
    option = typer.Option(
        *declarations,
        help=_help(field, choices),
        show_default=not field.is_required() and field.default is not None,
    )
    default = (
        None if field.is_required() else field.get_default(call_default_factory=True)
    )
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[kind if default is not None else kind | None, option],
    )


def _option_type(annotation: Any) -> tuple[type, list[str] | None]:
    """The option's Python type, and its choices when the field is a Literal."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return str, [str(value) for value in get_args(annotation)]
    if annotation in (str, int, float, bool):
        return annotation, None
    raise TypeError(f"no command-line option for a field of type {annotation!r}")


_BOUNDS = {
    annotated_types.Ge: ("ge", ">="),
    annotated_types.Gt: ("gt", ">"),
    annotated_types.Le: ("le", "<="),
    annotated_types.Lt: ("lt", "<"),
}


def _help(field: FieldInfo, choices: list[str] | None) -> str:
    """The field's description, then its bounds, choices and whether required."""
    text = field.description or ""
    bounds = [
        f"{sign}{getattr(item, attribute):g}"
        for item in field.metadata
        for kind, (attribute, sign) in _BOUNDS.items()
        if isinstance(item, kind)
    ]
    if bounds:
        text += f" [{', '.join(bounds)}]"
    if choices:
        text += f" (one of: {', '.join(choices)})"
    if field.is_required():
        text += " (required)"
    return text


def with_options(*parameters: Iterable[inspect.Parameter]) -> Callable:
    """Give a ``def command(ctx, ..., **options)`` the generated options.

    The function's own parameters (``**options`` excluded) stay first; typer
    reads the combined signature.
    """

    def decorate(function: Callable) -> Callable:
        own = [
            p
            for p in inspect.signature(function, eval_str=True).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        generated = [p for group in parameters for p in group]
        names = [p.name for p in own + generated]
        duplicates = {name for name in names if names.count(name) > 1}
        if duplicates:
            raise TypeError(f"options declared twice: {sorted(duplicates)}")
        function.__signature__ = inspect.Signature(own + generated)
        return function

    return decorate


def given(ctx: typer.Context, values: Mapping[str, object]) -> dict[str, object]:
    """The values of ``values`` the user set (command line or environment).

    Compared by name: typer carries its own copy of click, whose
    ``ParameterSource`` is not ``click.core.ParameterSource``.
    """
    defaults = {"DEFAULT", "DEFAULT_MAP"}
    chosen = {}
    for name, value in values.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in defaults:
            chosen[name] = value
    return chosen


def read_config_file(path: Path | None) -> dict[str, Any]:
    """The mapping in a ``--config`` YAML file ({} without one).

    Raises:
        PipelineError: unreadable, not YAML, or not a mapping.
    """
    if path is None:
        return {}
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PipelineError(
            f"--config {path}: cannot read it as YAML ({exc})."
        ) from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise PipelineError(
            f"--config {path}: expected a mapping of config fields, got "
            f"{type(values).__name__}."
        )
    return values


def build(model: type[BaseModel], values: Mapping[str, object], *, prefix: str = ""):
    """``model`` from ``values``; invalid ones become one line per option.

    Args:
        prefix: a nested model's field name (e.g. ``training``) whose fields are
            flat options: left out of the option names in messages.

    Raises:
        PipelineError: ``Invalid option(s): --epochs: ...; --seed: ....``
    """
    try:
        return model(**values)
    except ValidationError as exc:
        raise PipelineError(
            f"Invalid option(s): {option_errors(exc, prefix)}."
        ) from None


def option_errors(error: ValidationError, prefix: str = "") -> str:
    """``--field-name: message`` for each error, joined with ``; ``."""
    problems = []
    for item in error.errors():
        location = [str(part) for part in item["loc"]]
        if prefix and location[:1] == [prefix] and len(location) > 1:
            location = location[1:]
        problems.append(f"--{'-'.join(location).replace('_', '-')}: {item['msg']}")
    return "; ".join(problems)
