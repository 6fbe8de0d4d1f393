"""Help pages with plain value names: ``INTEGER``, ``PATH``, ``TEXT``, ``[onnx|torchscript]``.

Typer writes value types as ``<bool>``, ``<list[str]>`` or ``<int range> [x>=1]``, including on
``--help`` itself. Typer builds its parameter objects itself and offers no hook for their class,
so the command classes here give each parameter a subclass that only changes how its type is
shown (parsing and validation stay typer's): flags show nothing, an argument is named in
capitals, and bounds are left to the help text (a value out of range is still refused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

_TYPE_NAMES = {int: "INTEGER", float: "FLOAT", str: "TEXT", bool: "BOOLEAN", Path: "PATH"}


def plain_type(param: TyperArgument | TyperOption) -> str:
    """The click-style name of a parameter's value type (``INTEGER``, ``PATH``, ``[a|b]``)."""
    desc = param.type_descriptor
    if desc.is_choice:
        return "[" + "|".join(str(c) for c in desc.choices or ()) + "]"
    if desc.is_path:
        return "PATH"
    annotation = get_args(desc.annotation)[0] if desc.is_list else desc.annotation
    return _TYPE_NAMES.get(annotation, "TEXT")


class _PlainOption(TyperOption):
    def display_type_rich(self, ctx: typer.Context) -> str | None:
        if self.metavar is not None:
            return self.metavar
        return None if self.is_flag else plain_type(self)

    def _get_number_range_help_str(self) -> str | None:
        return None


class _PlainArgument(TyperArgument):
    @property
    def display_name_raw(self) -> str:
        return self.metavar if self.metavar is not None else (self.name or "").upper()

    def display_type_rich(self, ctx: typer.Context) -> str | None:
        return plain_type(self)

    def _get_number_range_help_str(self) -> str | None:
        return None


def _plain(params: list[Any]) -> list[Any]:
    for param in params:
        if not hasattr(param, "type_descriptor"):
            continue  # a typer that still writes click's plain names
        if type(param) is TyperOption:
            param.__class__ = _PlainOption  # same fields, only the help display differs
        elif type(param) is TyperArgument:
            param.__class__ = _PlainArgument
    return params


class PlainCommand(TyperCommand):
    """A typer command whose help shows plain value names."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        return _plain(super().get_params(ctx))


class PlainGroup(TyperGroup):
    """A typer group whose help shows plain value names (its commands need `PlainCommand`)."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        return _plain(super().get_params(ctx))
