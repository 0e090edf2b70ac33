"""The command line's options, made from the settings classes: declared once, shared by every command.

`settings_options(EngineSettings, into="engine")` gives a command one option per field of
`EngineSettings` (its flag, default, range, help and `SD3POSE_*` variable come from the field) and
calls it with `engine=EngineSettings(...)` built from them. So `generate`, `serve` and `worker` take
the same model options, and a new field (a new model option) reaches all of them at once. `fail` is
how every command stops on a bad option or input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, TypeVar, get_type_hints

import annotated_types
import typer
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from sd3pose.settings import ENV_PREFIX

S = TypeVar("S", bound=BaseSettings)
Command = TypeVar("Command", bound=Callable[..., Any])

# Flags whose names are not simply the field's name with dashes (and without a seconds suffix).
FLAGS = {
    "use_t5": "--t5/--no-t5",
    "price_per_image": "--price",
    "rate_limit_per_minute": "--rate-limit",
    "max_disk_gb": "--max-disk",
}


def flag(name: str, annotation: Any) -> str:
    """The option's declaration: `--name` (bools: `--name/--no-name`)."""
    if name in FLAGS:
        return FLAGS[name]
    dashed = "--" + name.removesuffix("_s").replace("_", "-")
    return f"{dashed}/--no-{dashed[2:]}" if annotation is bool else dashed


def _bounds(field: FieldInfo) -> dict[str, Any]:
    """The field's range, as typer's min/max, so a value out of range is refused like any bad option
    (an open bound's edge value itself is refused by the settings class)."""
    bounds: dict[str, Any] = {}
    for rule in field.metadata:
        if isinstance(rule, annotated_types.Ge):
            bounds["min"] = rule.ge
        elif isinstance(rule, annotated_types.Gt):
            bounds["min"] = rule.gt
        elif isinstance(rule, annotated_types.Le):
            bounds["max"] = rule.le
    return bounds


def _shown_default(field: FieldInfo) -> str | bool:
    default = field.get_default(call_default_factory=True)
    return False if default is None else str(default)


def _option(name: str, field: FieldInfo, annotation: Any) -> inspect.Parameter:
    option = typer.Option(
        None,  # None: not given, so the settings class applies the environment, then its default
        flag(name, annotation),
        envvar=ENV_PREFIX + name.upper(),
        help=field.description,
        show_default=_shown_default(field),
        **_bounds(field),
    )
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation | None)


def fail(message: str) -> NoReturn:
    """End the command with one clear sentence on stderr (exit code 2), never a traceback."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def build(settings_class: type[S], **given: Any) -> S:
    """The settings from the options a user gave (None: not given); a bad combination exits with one line."""
    try:
        return settings_class(**{name: value for name, value in given.items() if value is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{flag(str(e['loc'][0]), None)}: {e['msg']}" for e in exc.errors() if e["loc"])
        fail(problems or str(exc))


def settings_options(
    settings_class: type[BaseSettings],
    *,
    into: str,
    exclude: Iterable[str] = (),
    only: Iterable[str] | None = None,
) -> Callable[[Command], Command]:
    """Give the decorated command one option per field of `settings_class` (`only` those, less
    `exclude`), and call it with `into=settings_class(...)` built from them."""
    hints = get_type_hints(settings_class)
    chosen = set(settings_class.model_fields if only is None else only) - set(exclude)
    fields = {name: f for name, f in settings_class.model_fields.items() if name in chosen}

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.name != into]
        added = [_option(name, field, _plain(hints[name])) for name, field in fields.items()]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in fields}
            return command(**kwargs, **{into: build(settings_class, **given)})

        wrapper.__signature__ = signature.replace(parameters=own + added)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {
            **{k: v for k, v in command.__annotations__.items() if k != into},
            **{p.name: p.annotation for p in added},
        }
        return wrapper  # type: ignore[return-value]

    return decorate


def _plain(annotation: Any) -> Any:
    """`X | None` -> X: every option is optional here (None means not given)."""
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    return args[0] if len(args) == 1 and type(None) in getattr(annotation, "__args__", ()) else annotation
