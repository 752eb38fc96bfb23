"""Issue 21: every install route (pip, Binder, conda, Colab, 00's version check) names every
library the notebooks and helpers import, at the versions requirements.txt pins."""

import ast
import re
import sys
from importlib.metadata import packages_distributions, requires
from pathlib import Path

import nbformat
import pytest

from helpers.config import COLAB_PREINSTALLED, REPO_ROOT, RUNTIME_PACKAGES

#: Used only when present or chosen: Keras backends other than TensorFlow, Dask's dashboard.
OPTIONAL = {"torch", "jax", "bokeh"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def module_names(source: str) -> set[str]:
    """Top-level modules ``source`` imports, or finds with ``importlib.util.find_spec("...")``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "find_spec" and node.args:
            if isinstance(node.args[0], ast.Constant):
                found.add(str(node.args[0].value).split(".")[0])
    return found


def notebook_code(path: Path) -> str:
    return "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")


NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
SOURCES = [p.read_text() for p in sorted((REPO_ROOT / "helpers").glob("*.py"))] + list(
    map(notebook_code, NOTEBOOKS)
)


def pins(path: Path) -> dict[str, str]:
    """``name==version`` (pip) or ``name=version`` (conda) lines of a requirements file or
    environment.yml: {normalised name: version, or "" if unpinned}."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip().lstrip("- ").strip()
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(?:(==|=|>=)\s*([^,\s]+).*)?", line)
        if match and not line.endswith(":"):
            found[norm(match[1])] = match[3] or ""
    return found


REQUIRED = pins(REPO_ROOT / "requirements.txt")
NODEPS = pins(REPO_ROOT / "requirements-nodeps.txt")  # scripts/install-nodeps.sh, on every route


def test_runtime_packages_are_exactly_what_the_course_imports():
    owners = packages_distributions()
    imported = set()
    for source in SOURCES:
        for module in module_names(source) - set(sys.stdlib_module_names) - {"helpers"} - OPTIONAL:
            (dist,) = owners[module]
            imported.add(norm(dist))
    listed = {norm(p) for p in RUNTIME_PACKAGES}
    assert (imported & (set(REQUIRED) | set(NODEPS))) - listed == set()  # every pinned import is listed
    # a library imported directly but installed as a dependency of a listed one counts as listed
    assert imported - dependencies(listed) == listed, (imported - dependencies(listed)) ^ listed


def dependencies(names: set[str]) -> set[str]:
    """Every distribution that installing ``names`` installs (not extras), by their metadata."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        try:
            needs = requires(name) or []
        except Exception:  # not installed here: an optional or platform-only dependency
            continue
        for req in needs:
            if "extra ==" not in req:
                dep = norm(re.split(r"[ ;<>=!~\[(]", req)[0])
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
    return seen - names


@pytest.mark.parametrize("name", [norm(p) for p in RUNTIME_PACKAGES])
def test_pip_binder_and_conda_install_each_at_the_pinned_version(name):
    if name in NODEPS:  # installed --no-deps by the one script that every route calls
        for route in ("binder/postBuild", "Makefile"):
            assert "install-nodeps.sh" in (REPO_ROOT / route).read_text(), route
        return
    pinned = REQUIRED[name]
    assert pinned, f"{name} is not pinned in requirements.txt"
    binder = pins(REPO_ROOT / "binder" / "requirements.txt")
    binder_name = "tensorflow-cpu" if name == "tensorflow" else name  # Binder has no GPU
    assert binder.get(binder_name) == pinned, f"binder/requirements.txt: {binder_name}"
    conda = pins(REPO_ROOT / "environment.yml")
    assert conda.get(name) == pinned, f"environment.yml: {name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_colab_cell_installs_what_colab_lacks(path):
    setup = next(c.source for c in nbformat.read(path, as_version=4).cells if "google.colab" in c.source)
    installs = set()
    for command in re.findall(r"pip install -q ([^\"&]+)", setup):
        installs |= {norm(w) for w in command.split() if not w.startswith("-")}
    covered = installs | {norm(p) for p in COLAB_PREINSTALLED} | set(NODEPS)
    assert "install-nodeps.sh" in setup
    assert {norm(p) for p in RUNTIME_PACKAGES} - covered == set()


def test_setup_notebook_prints_the_version_of_every_runtime_package():
    source = notebook_code(REPO_ROOT / "notebooks" / "00_setup.ipynb")
    assert "for package in RUNTIME_PACKAGES:" in source and "version(package)" in source
