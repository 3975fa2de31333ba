"""Find what to serve: a handler by ``module:attribute``, or the models of a module."""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

from websocketspec.exceptions import ConfigurationError
from websocketspec.server.app import Handler

__all__ = ["load_handler", "models_of"]


def _import(module: str) -> Any:
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module!r}: {exc}") from exc


def load_handler(target: str) -> Handler:
    """Load ``module:attribute``: a :class:`Handler`, or a function returning one."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not attribute:
        raise ConfigurationError(f"expected 'module:attribute', got {target!r}")
    obj: Any = _import(module_name)
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(
                f"{module_name!r} has no attribute {attribute!r}"
            ) from None
    if callable(obj) and not isinstance(obj, Handler):
        obj = obj()
    if not isinstance(obj, Handler):
        raise ConfigurationError(
            f"{target!r} is not a websocketspec Handler (got {type(obj).__name__})"
        )
    return obj


def models_of(module: str) -> list[Any]:
    """The SQLAlchemy mapped classes defined in ``module``, in definition order."""
    mod = _import(module)
    found = []
    for _, obj in inspect.getmembers(mod, inspect.isclass):
        if (
            obj.__module__ == mod.__name__
            and hasattr(obj, "__mapper__")
            and hasattr(obj, "__table__")
        ):
            found.append(obj)
    if not found:
        raise ConfigurationError(f"{module!r} defines no SQLAlchemy mapped classes")
    return found
