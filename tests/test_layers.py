"""The package's rooms import one way, from the bottom up, and the server stays light.

Every ``import fedmrg...`` / ``from fedmrg... import`` in the package is read from the source, lazy
ones inside functions too, and checked against the order of the rooms. The server's modules are
imported in a fresh interpreter to check that none of the model stack comes with them.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import fedmrg

PACKAGE = Path(fedmrg.__file__).parent

# Bottom to top. A module may import its own room and any room of a lower rank; rooms that share a
# rank do not import each other.
RANKS = {
    "basics": 0,  # errors, config, io, versions, the package itself
    "labels": 1,
    "data": 2,
    "eval": 3,  # metrics are functions of text; the model's own scoring lives in model.inference
    "model": 4,
    "fl": 5,
    "experiments": 6,
    "ops": 6,
    "cli": 7,
}
BASICS = {"fedmrg", "fedmrg.errors", "fedmrg.config", "fedmrg.io", "fedmrg.versions"}
SERVER_MODULES = ("fedmrg.fl.aggregator", "fedmrg.fl.controller")  # with all they import: merge, codec, results
MODEL_STACK = ("transformers", "peft", "bitsandbytes", "monai")


def room_of(module: str) -> str:
    """``fedmrg.data.synthetic.render`` -> ``data``; basics and the CLI are rooms of their own."""
    if module in BASICS:
        return "basics"
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "fedmrg":
        raise ValueError(f"{module}: not a fedmrg module")
    room = parts[1]
    if room not in RANKS:
        raise ValueError(f"{module}: room '{room}' has no rank in tests/test_layers.py")
    return room


def module_name(path: Path, package: Path = PACKAGE) -> str:
    relative = path.relative_to(package.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, module) for every fedmrg import in ``source``, wherever it stands in the file."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "fedmrg"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "fedmrg":
                # "from fedmrg import x": x may be a room (a module) or a name of the package itself
                names = [f"{target}.{a.name}" for a in node.names] if target == "fedmrg" else [target]
                found += [(node.lineno, name if _is_room(name) else target) for name in names]
    return found


def _is_room(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 2 and parts[1] in RANKS


def upward_imports(package: Path = PACKAGE) -> list[str]:
    """One line per import that goes up or sideways between rooms: ``file:line: a (room) imports b (room)``."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        module = module_name(path, package)
        room = room_of(module)
        for line, target in imported_modules(path.read_text(encoding="utf-8"), module, path.name == "__init__.py"):
            target_room = room_of(target)
            if target_room == room:
                continue
            if RANKS[target_room] >= RANKS[room]:
                problems.append(
                    f"{path.relative_to(package.parent)}:{line}: {module} ({room}) imports {target} "
                    f"({target_room}), which is not below it"
                )
    return problems


def test_rooms_import_only_rooms_below_them():
    assert upward_imports() == []


def test_an_upward_import_is_named_with_its_file_and_line(tmp_path):
    package = tmp_path / "fedmrg"
    for folder in ("labels", "model"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "model" / "mrg.py").write_text("from fedmrg.labels.observations import OBSERVATIONS\n")
    (package / "labels" / "labeler.py").write_text('"""x"""\n\n\ndef f():\n    from fedmrg.model import mrg\n')
    assert upward_imports(package) == [
        "fedmrg/labels/labeler.py:5: fedmrg.labels.labeler (labels) imports fedmrg.model (model), which is not below it"
    ]


def test_every_room_of_the_package_has_a_rank():
    rooms = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").is_file()}
    assert rooms <= RANKS.keys()
    top_modules = {f"fedmrg.{path.stem}" for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    assert top_modules - BASICS == {"fedmrg.cli"}


def test_jobs_use_only_the_flare_runtime():
    """A job folder is what a hospital receives: it needs the FLARE room, not the experiment runner."""
    for job in sorted((PACKAGE.parents[1] / "jobs").glob("*/job.py")):
        for line, target in imported_modules(job.read_text(encoding="utf-8"), "job", False):
            assert room_of(target) in ("basics", "fl"), f"{job}:{line} imports {target}"


@pytest.mark.parametrize("module", SERVER_MODULES)
def test_the_server_side_imports_no_model_stack(module):
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(json.dumps(sorted(m for m in {MODEL_STACK!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], f"{module} imports the model stack"
