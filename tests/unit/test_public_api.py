"""The public surface is pinned, and every module imports on its own (no cycles)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types

import pytest

import websocketspec

PUBLIC = [
    "Adapter",
    "Broker",
    "Change",
    "ColumnType",
    "Config",
    "ConfigurationError",
    "FilterOption",
    "Handler",
    "Handshake",
    "HookContext",
    "HookError",
    "HookRegistry",
    "HookType",
    "InvalidFilterError",
    "InvalidMessageError",
    "InvalidModelError",
    "LimitError",
    "MemoryBroker",
    "MessageType",
    "MissingDependencyError",
    "ModelNotFoundError",
    "ModelRegistry",
    "NotFoundError",
    "Operation",
    "OperationError",
    "PreloadOption",
    "ProtocolError",
    "QueryOptions",
    "SortOption",
    "UnauthorizedError",
    "ValidationError",
    "WebSocketSpecError",
    "__version__",
]


def all_modules() -> list[str]:
    """Every module of the package, found on disk so that new ones are covered."""
    names = ["websocketspec"]
    for info in pkgutil.walk_packages(websocketspec.__path__, "websocketspec."):
        names.append(info.name)
    return sorted(names)


MODULES = all_modules()


def test_all_is_pinned() -> None:
    assert websocketspec.__all__ == PUBLIC


def test_all_is_sorted_and_unique() -> None:
    assert sorted(set(websocketspec.__all__)) == websocketspec.__all__


def test_every_public_name_exists() -> None:
    missing = [n for n in websocketspec.__all__ if not hasattr(websocketspec, n)]
    assert missing == []


def test_every_public_looking_attribute_is_in_all() -> None:
    # Submodules become attributes when imported; anything else must be exported.
    exposed = sorted(
        name
        for name, value in vars(websocketspec).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    )
    assert exposed == [n for n in PUBLIC if not n.startswith("_")]


def test_version_matches_the_distribution() -> None:
    from importlib.metadata import version

    assert websocketspec.__version__ == version("websocketspec")


def test_module_walk_finds_the_core_modules() -> None:
    # Guards the walk itself: if it found nothing, the import tests would pass vacuously.
    for name in (
        "websocketspec.protocol.codec",
        "websocketspec.protocol.values",
        "websocketspec.server.dispatch",
        "websocketspec.server.app",
        "websocketspec.adapters.sqlalchemy",
    ):
        assert name in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_module_declares_all_and_its_names_exist(module: str) -> None:
    mod = importlib.import_module(module)
    public = [
        name
        for name, value in vars(mod).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    ]
    if hasattr(mod, "__path__") and not public:
        # A package whose __init__ defines nothing (its modules hold the names).
        return
    assert "__all__" in vars(mod), f"{module} declares no __all__"
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert missing == [], f"{module}.__all__ names missing attributes"


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    result = run_python(f"import {module}")
    assert result.returncode == 0, result.stderr


def test_package_imports_without_optional_dependencies() -> None:
    # `None` in sys.modules makes an import fail as if the package were absent.
    blocked = ["sqlalchemy", "aiosqlite", "asyncpg", "uvicorn", "websockets", "uvloop"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None\n"
        "import websocketspec\n"
        "import websocketspec.server.app\n"
        "assert not any(sys.modules.get(n) for n in "
        f"{blocked!r}), 'an optional dependency was imported'\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr


def test_missing_sqlalchemy_names_the_extra_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['sqlalchemy'] = None\n"
        "from websocketspec import MissingDependencyError\n"
        "try:\n"
        "    import websocketspec.adapters.sqlalchemy\n"
        "except MissingDependencyError as exc:\n"
        "    assert isinstance(exc, ImportError)\n"
        "    assert exc.extra == 'sqlalchemy', exc.extra\n"
        '    assert "websocketspec[sqlalchemy]" in str(exc), str(exc)\n'
        "else:\n"
        "    raise SystemExit('no MissingDependencyError')\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
