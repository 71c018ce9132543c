"""The package's architecture, checked on the source: imports only flow down the rooms.

Rooms, lowest first: data → models → train → evaluation → experiment → methods; a room may import itself
and the rooms below it. config, errors, tf_env and io are importable from everywhere and import no room.
Only data/ reads tfds_builders, which itself needs nothing from simclr_med but simclr_med.errors; nothing
imports tests (scripts may use its fixtures); run.py alone defines absl flags (tests may parse them with
run.py's definitions). Lazy imports inside functions count too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("data", "models", "train", "evaluation", "experiment", "methods")
BASE = ("config", "errors", "tf_env", "io")
PACKAGE = "simclr_med"
# Where the project's own Python lives (not .venv, not shared data).
SOURCES = ("simclr_med", "tfds_builders", "tests", "scripts", "benchmarks", "run.py")


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, dotted name) of everything `module` imports, at any depth (lazy imports too): `from a import b`
    gives `a.b` (b may be a submodule), relative imports are resolved, `import_module("x")` counts."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found += [(node.lineno, f"{base}.{a.name}" if a.name != "*" else base) for a in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            found.append((node.lineno, node.args[0].value))
    return found


def room_of(module: str) -> str | None:
    """The room (or base module) a simclr_med module belongs to; None for the package's own __init__."""
    parts = module.split(".")
    return parts[1] if parts[0] == PACKAGE and len(parts) > 1 else None


def _is(name: str, top: str) -> bool:
    return name == top or name.startswith(top + ".")


def violations(module: str, names: list[tuple[int, str]]) -> list[str]:
    """What `module` imports against the layout, one line each."""
    found = []
    own = room_of(module)
    for line, name in names:
        where = f"{module}:{line} imports {name}"
        if _is(name, "tests") and not _is(module, "tests") and not _is(module, "scripts"):
            found.append(f"{where}: only tests and scripts import tests")
        if _is(name, "absl.flags") and module != "run" and not _is(module, "tests"):  # tests may drive run.py
            found.append(f"{where}: only run.py defines flags")
        if _is(module, "tfds_builders") and _is(name, PACKAGE) and not _is(name, f"{PACKAGE}.errors"):
            found.append(f"{where}: tfds_builders may use only {PACKAGE}.errors")
        if not _is(module, PACKAGE):
            continue
        if _is(name, "tfds_builders") and own != "data":
            found.append(f"{where}: only {PACKAGE}.data reads tfds_builders")
        target = room_of(name) if _is(name, PACKAGE) else None
        if target is None or target in BASE:
            continue
        if own in BASE:
            found.append(f"{where}: {PACKAGE}.{own} is importable from every room, so it imports none")
        elif target not in ROOMS:
            found.append(f"{where}: {PACKAGE}.{target} is in no room")
        elif own in ROOMS and ROOMS.index(target) > ROOMS.index(own):
            found.append(f"{where}: {own} is below {target}")
    return found


def _modules():
    for entry in SOURCES:
        path = REPO / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            parts = file.relative_to(REPO).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            yield ".".join(parts[:-1] if is_package else parts), is_package, file


MODULES = list(_modules())


@pytest.mark.parametrize("module,is_package,file", MODULES, ids=[m for m, _, _ in MODULES])
def test_imports_follow_the_layout(module, is_package, file):
    found = violations(module, imports(file.read_text(), module, is_package))
    assert not found, "\n".join(found)


def test_every_module_is_in_a_room():
    rooms = {room_of(m) for m, _, _ in MODULES if _is(m, PACKAGE)} - {None}
    assert rooms <= set(ROOMS) | set(BASE), f"outside the rooms: {sorted(rooms - set(ROOMS) - set(BASE))}"


@pytest.mark.parametrize("module,source,expected", [
    ("simclr_med.data.pipelines", "from simclr_med.models import resnet", "data is below models"),
    ("simclr_med.train.loop", "def f():\n    from simclr_med import experiment", "train is below experiment"),
    ("simclr_med.models.heads", "from ..methods import dvme", "models is below methods"),
    ("simclr_med.errors", "from simclr_med.data import datasets", "imports none"),
    ("simclr_med.evaluation.plots", "import importlib\nimportlib.import_module('simclr_med.methods.sweep')",
     "evaluation is below methods"),
    ("simclr_med.data.demo", "from tests.fixtures import layouts", "only tests and scripts"),
    ("simclr_med.methods.segmentation", "from tfds_builders import seg_masks", "only simclr_med.data reads"),
    ("tfds_builders.__main__", "from simclr_med.data import datasets", "only simclr_med.errors"),
    ("simclr_med.experiment", "from absl import flags", "only run.py"),
    ("simclr_med.experiment", "import absl.flags", "only run.py"),
])
def test_the_check_catches(module, source, expected):
    """Each rule fails on a module that breaks it (so a passing run means something)."""
    found = violations(module, imports(source, module))
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize("module,source", [
    ("simclr_med.methods.sweep", "from simclr_med import experiment, config\nfrom ..data import augment"),
    ("simclr_med.train.loop", "from . import checkpoints\nfrom ..models import resnet\nfrom .. import io"),
    ("simclr_med.config", "from simclr_med import errors, tf_env"),
    ("simclr_med.data.datasets", "import tfds_builders\nfrom tfds_builders import common"),
    ("tfds_builders.common", "from simclr_med.errors import DataError"),
    ("run", "from absl import app, flags"),
    ("tests.test_config", "from absl import flags"),
    ("tests.data.test_real_cxr", "from tests.fixtures import real_cxr"),
])
def test_the_check_allows(module, source):
    assert not violations(module, imports(source, module))
