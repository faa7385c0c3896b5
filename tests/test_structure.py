"""The code's one-way structure, checked from the source itself (ast, no imports run).

- Library modules (src/genrec/*.py) never import a stage module (src/genrec/stages/*.py).
- Every dvc.yaml stage lists, in its `deps`, every genrec module its command imports, transitively
  (its import closure), and no module it does not import: an edited module reruns exactly the stages it
  can change. The only modules left out are those in NOT_DEPS, each with the reason it cannot change an
  output.

Both checks are functions of (sources, dvc.yaml) so that the tests below can also show them failing on a
mutated copy.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import yaml

NOT_DEPS = {
    # Deliberately absent from every stage's deps (paths relative to src/genrec):
    "__init__.py": "the package's docstring and version",
    "errors.py": "the error type: changes a failure's message, never an output",
    "config/params.py": "the params schema: every value a stage reads is in params.yaml (tests/config/test_params.py "
                        "proves its defaults equal the dataclasses') and reaches DVC through the stage's `params:`",
    "config/sections.py": "the params schema's sections (the same reason as config/params.py)",
    "config/values.py": "the params schema's value types and messages: a value's type and range are checked here, "
                        "and the value itself reaches DVC through the stage's `params:`",
    "cli.py": "the command table: parses paths and hands them to stages/<command>.py",
}


def module_imports(path: Path, src: Path) -> set[str]:
    """genrec modules `path` imports (at any depth of the file), as paths relative to `src`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] != "genrec":
            continue
        relative = Path(*parts[1:]) if len(parts) > 1 else Path("__init__")
        if (src / relative).with_suffix(".py").is_file():
            found.add(relative.with_suffix(".py").as_posix())
        elif (src / relative / "__init__.py").is_file():
            found.add((relative / "__init__.py").as_posix())
    found.discard(path.relative_to(src).as_posix())
    return found


def import_closure(start: str, src: Path) -> set[str]:
    """`start` and every genrec module it reaches through imports (relative paths)."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(module_imports(src / module, src))
    return seen


def stage_module(cmd: str) -> str:
    """stages/<command>.py of a dvc.yaml command (`genrec X ...` or `... -m genrec.cli X ...`)."""
    words = cmd.split()
    at = next(i for i, w in enumerate(words) if w in ("genrec", "genrec.cli"))
    return f"stages/{words[at + 1]}.py"


def missing_and_extra_deps(dvc: dict, src: Path) -> list[str]:
    """One line per stage whose deps miss a module of its import closure, or list one outside it."""
    problems = []
    for name, stage in dvc["stages"].items():
        stage = stage.get("do", stage)  # a foreach stage: its template
        closure = {m for m in import_closure(stage_module(stage["cmd"]), src) - set(NOT_DEPS)
                   if not m.endswith("/__init__.py")}  # sub-package markers: empty (test below)
        listed = {d.removeprefix("src/genrec/") for d in stage.get("deps", []) if d.startswith("src/genrec/")}
        for module in sorted(closure - listed):
            problems.append(f"stage {name}: deps miss src/genrec/{module} (imported, transitively)")
        for module in sorted(listed - closure):
            problems.append(f"stage {name}: deps list src/genrec/{module}, which it does not import"
                            + (" (NOT_DEPS: " + NOT_DEPS[module] + ")" if module in NOT_DEPS else ""))
    return problems


def stage_imports_in_library(src: Path) -> list[str]:
    """One line per library module (outside stages/) that imports a stage module."""
    problems = []
    for path in sorted(src.rglob("*.py")):
        module = path.relative_to(src).as_posix()
        if module.startswith("stages/"):
            continue
        for imported in sorted(module_imports(path, src)):
            if imported.startswith("stages/") and imported != "stages/__init__.py":
                problems.append(f"src/genrec/{module} imports src/genrec/{imported}")
    return problems


@pytest.fixture(scope="module")
def src(root) -> Path:
    return root / "src" / "genrec"


@pytest.fixture(scope="module")
def dvc(root) -> dict:
    return yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))


def test_every_stage_lists_exactly_its_import_closure(dvc, src):
    assert missing_and_extra_deps(dvc, src) == []


def test_library_modules_never_import_stages(src):
    assert stage_imports_in_library(src) == []


def test_sub_package_markers_are_empty(src):
    """Sub-packages group modules by role; their __init__.py stay empty, so no stage depends on them."""
    markers = sorted(src.rglob("*/__init__.py"))
    assert markers and [m for m in markers if m.read_text(encoding="utf-8").strip()] == []


def test_not_deps_names_real_modules(src):
    for module in NOT_DEPS:
        assert (src / module).is_file(), module


def test_a_removed_dep_is_named(dvc, src):
    mutated = copy.deepcopy(dvc)
    mutated["stages"]["mostpop"]["do"]["deps"].remove("src/genrec/evaluation/metrics.py")
    assert missing_and_extra_deps(mutated, src) == [
        "stage mostpop: deps miss src/genrec/evaluation/metrics.py (imported, transitively)"]


def test_a_transitive_import_is_followed(tmp_path):
    src = tmp_path / "genrec"
    (src / "stages").mkdir(parents=True)
    (src / "stages" / "x.py").write_text("from genrec import a\n")
    (src / "a.py").write_text("def f():\n    from genrec.b import g\n")  # imported inside a function
    (src / "b.py").write_text("import genrec.errors\n")
    (src / "errors.py").write_text("")
    (src / "c.py").write_text("")
    dvc = {"stages": {"x": {"cmd": "genrec x --out o", "deps": ["src/genrec/stages/x.py", "src/genrec/a.py",
                                                              "src/genrec/c.py"]}}}
    assert missing_and_extra_deps(dvc, src) == [
        "stage x: deps miss src/genrec/b.py (imported, transitively)",
        "stage x: deps list src/genrec/c.py, which it does not import"]


def test_a_stage_import_in_the_library_is_named(tmp_path):
    src = tmp_path / "genrec"
    (src / "stages").mkdir(parents=True)
    (src / "stages" / "__init__.py").write_text("")
    (src / "stages" / "evaluate.py").write_text("")
    (src / "lib.py").write_text("from genrec.stages.evaluate import summarise\n")
    (src / "other.py").write_text("from genrec.stages import evaluate\n")
    assert stage_imports_in_library(src) == ["src/genrec/lib.py imports src/genrec/stages/evaluate.py",
                                             "src/genrec/other.py imports src/genrec/stages/evaluate.py"]
