"""Command-line flags derived from a config dataclass: one declaration per setting.

A field's flag is its name with dashes (`max_workers` -> `--max-workers`), its type comes from
the annotation, its default from the field, and its help is the field's entry in the class's
`Attributes:` docstring section, so the docstring a reader sees in the code and the `--help` a
user sees on the command line are the same text:

    parser = argparse.ArgumentParser(...)
    flags = add_config_flags(parser, EnvironmentConfig, exclude=("game",))
    args = parser.parse_args(argv)
    config = EnvironmentConfig(game=args.game, **config_values(parser, args))

Fields whose default is computed elsewhere (a game's settings, another flag) are listed in
`derived`: their flag defaults to None, and `values` leaves them out while unset, so the
config's own constructor (`ReplayConfig.for_game`) fills them in.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from typing import Any, Iterable, Mapping, Sequence

# An entry of an `Attributes:` section: "  name: text" or "  a, b, c: text shared by all".
_ENTRY = re.compile(r"^  ([a-z_][a-z0-9_]*(?:, [a-z_][a-z0-9_]*)*): (.*)$")
_SECTION = re.compile(r"^[A-Z][A-Za-z ]*:$")  # the next docstring section ("Raises:")
# Where a parser keeps the ConfigFlags added to it (argparse has no place for them).
_ATTRIBUTE = "_mufleet_config_flags"


def field_docs(cls: type) -> dict[str, str]:
    """field name -> its text in the `Attributes:` section of the docstrings of `cls` and its
    base classes (a field inherited from a settings section is documented there), continuation
    lines joined with single spaces. Fields documented together ("a, b: ...") share the text."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass.__doc__ and klass is not object:
            docs.update(_own_field_docs(klass.__doc__))
    return docs


def _own_field_docs(docstring: str) -> dict[str, str]:
    doc = inspect.cleandoc(docstring)
    docs: dict[str, str] = {}
    names: list[str] = []
    inside = False
    for line in doc.splitlines():
        if line == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        if _SECTION.match(line):
            break
        entry = _ENTRY.match(line)
        if entry:
            names = entry.group(1).split(", ")
            for name in names:
                docs[name] = entry.group(2).strip()
        elif line.startswith("    ") and names:
            for name in names:
                docs[name] = f"{docs[name]} {line.strip()}"
        elif line.strip():
            names = []  # prose between entries ends the previous entry
    return docs


def _scalar_type(annotation: Any) -> tuple[type, bool]:
    """(int | float | str | bool, whether None is allowed) of a field's annotation."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        if len(members) != 1:
            raise TypeError(f"no flag type for {annotation!r}")
        annotation = members[0]
    if typing.get_origin(annotation) is typing.Literal:
        kinds = {type(value) for value in typing.get_args(annotation)}
        if len(kinds) != 1:
            raise TypeError(f"no flag type for {annotation!r}")
        annotation = kinds.pop()
    if annotation not in (int, float, str, bool):
        raise TypeError(f"no flag type for {annotation!r}")
    return annotation, optional


def _help_text(doc: str, default: Any, derived: str | None) -> str:
    text = doc.replace("%", "%%")
    if derived is not None:
        return f"{text} (default: {derived})"
    if default is None:
        return text
    return f"{text} (default: %(default)s)"


@dataclasses.dataclass(frozen=True)
class ConfigFlags:
    """The flags `add_config_flags` added: `dest` -> config field, and which are derived.

    Attributes:
      fields: the config fields that got a flag, in the order they were added.
      derived: the fields whose unset flag (None) means "computed by the config's constructor".
    """

    fields: tuple[str, ...]
    derived: frozenset[str]

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        """field -> the parsed value, for every field with a flag; derived fields left unset
        are left out."""
        values = {}
        for field in self.fields:
            value = getattr(args, field)
            if field in self.derived and value is None:
                continue
            values[field] = value
        return values


def add_config_flags(parser: argparse.ArgumentParser, cls: type, *,
                     include: Sequence[str] | None = None, exclude: Iterable[str] = (),
                     derived: Mapping[str, str] | None = None,
                     defaults: Mapping[str, Any] | None = None,
                     choices: Mapping[str, Sequence[Any]] | None = None,
                     aliases: Mapping[str, Sequence[str]] | None = None,
                     names: Mapping[str, str] | None = None,
                     underscores: bool = False, group: str | None = None) -> ConfigFlags:
    """Adds a `--field-name` flag for each documented field of the dataclass `cls`.

    Args:
      parser: where the flags go.
      cls: a dataclass whose `Attributes:` docstring section documents every field given a flag
        (a field without an entry is a TypeError: a flag without help is a defect).
      include: the fields to add, in this order; default: every field in declaration order that
        has a scalar type (int, float, str, bool, or one of them | None) and is not excluded.
      exclude: fields the caller declares by hand (positional meaning, other names).
      derived: field -> what its default is when the flag is not given ("the game's
        replay.capacity"); such flags default to None and `values` leaves them out while unset.
      defaults: field -> a default other than the dataclass's (a required field's default).
      choices: field -> the allowed values (a `Literal` field's values by default).
      aliases: field -> more option strings for its flag ("--metrics-port").
      names: field -> its flag's name when it is not the field's ("--prefetch" for
        `prefetch_batches`): the name errors and `--help` use.
      underscores: flags spelled like the fields (`--max_request_rows`), as
        tensorflow_model_server spells its flags; default: with dashes (`--max-request-rows`).
      group: an argument group title for these flags (their own section of `--help`).

    Returns: the `ConfigFlags` whose `values(args)` gives the config's keyword arguments.
    """
    derived = dict(derived or {})
    defaults = dict(defaults or {})
    choices = dict(choices or {})
    aliases = dict(aliases or {})
    renamed = dict(names or {})
    excluded = set(exclude)
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    for name in (*derived, *defaults, *choices, *aliases, *renamed, *(include or ())):
        if name not in by_name:
            raise TypeError(f"{cls.__name__} has no field {name!r}")
    if include is None:
        names = []
        for name in by_name:
            if name in excluded:
                continue
            try:
                _scalar_type(hints[name])
            except TypeError:
                continue  # tuples, nested configs: their flags are declared by hand
            names.append(name)
    else:
        names = [name for name in include if name not in excluded]
    target = parser.add_argument_group(group) if group else parser
    for name in names:
        if name not in docs:
            raise TypeError(f"{cls.__name__}.{name} has no entry in the Attributes section of "
                            "its docstring, so its flag would have no help")
        kind, optional = _scalar_type(hints[name])
        if typing.get_origin(hints[name]) is typing.Literal and name not in choices:
            choices[name] = typing.get_args(hints[name])
        field = by_name[name]
        if name in derived:
            default = None
        elif name in defaults:
            default = defaults[name]
        elif field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None
        required = (default is None and name not in derived and not optional
                    and field.default is dataclasses.MISSING and name not in defaults)
        primary = renamed.get(name) or "--" + (name if underscores else name.replace("_", "-"))
        flags = (primary, *aliases.get(name, ()))
        help_text = _help_text(docs[name], default, derived.get(name))
        if kind is bool:
            target.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction,
                                default=default, help=help_text)
            continue
        target.add_argument(*flags, dest=name, type=kind, default=default, required=required,
                            choices=choices.get(name), help=help_text)
    flags = ConfigFlags(fields=tuple(names), derived=frozenset(derived))
    setattr(parser, _ATTRIBUTE, (*getattr(parser, _ATTRIBUTE, ()), flags))
    return flags


def config_values(parser: argparse.ArgumentParser, args: argparse.Namespace,
                  cls: type | None = None) -> dict[str, Any]:
    """The keyword arguments of every `add_config_flags` call on `parser` (or only of those
    for fields of `cls`) from the parsed `args`."""
    fields = {f.name for f in dataclasses.fields(cls)} if cls is not None else None
    values: dict[str, Any] = {}
    for flags in getattr(parser, _ATTRIBUTE, ()):
        for name, value in flags.values(args).items():
            if fields is None or name in fields:
                values[name] = value
    return values
