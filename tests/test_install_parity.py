"""Issue 21: every install route (pip, Binder, conda, Colab, 00's version check) names every
library the notebooks and helpers import, at the versions requirements.txt pins.

Issue 34: 00 reports a version on every route (Binder's TensorFlow is ``tensorflow-cpu``), and
Colab's setup installs only what Colab lacks, at releases that run on Colab's preinstalled ones."""

import ast
import re
import sys
from importlib.metadata import packages_distributions, requires
from pathlib import Path

import nbformat
import pytest

from helpers.config import DISTRIBUTION_NAMES, REPO_ROOT, RUNTIME_PACKAGES

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
SOURCES = [p.read_text() for p in sorted((REPO_ROOT / "helpers").rglob("*.py"))] + list(
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
    binder_name = next((n for n in map(norm, DISTRIBUTION_NAMES.get(name, (name,))) if n in binder), name)
    assert binder.get(binder_name) == pinned, f"binder/requirements.txt: {binder_name}"
    conda = pins(REPO_ROOT / "environment.yml")
    assert conda.get(name) == pinned, f"environment.yml: {name}"


def test_setup_notebook_prints_the_version_of_every_runtime_package():
    source = notebook_code(REPO_ROOT / "notebooks" / "00_setup.ipynb")
    assert "for package in RUNTIME_PACKAGES:" in source and "package_version(package)" in source


COLAB = REPO_ROOT / "colab"
COLAB_PREINSTALLED = pins(COLAB / "preinstalled.txt")
COLAB_INSTALLS = pins(COLAB / "requirements.txt")  # scripts/colab_setup.py, where missing
COLAB_PYTHON = "3.12"

#: The distributions each install route puts in place, by its own files.
ROUTES = {
    "pip": set(REQUIRED) | set(NODEPS),
    "conda": set(pins(REPO_ROOT / "environment.yml")) | set(NODEPS),
    "binder": set(pins(REPO_ROOT / "binder" / "requirements.txt")) | set(NODEPS),
    "colab": set(COLAB_PREINSTALLED) | set(COLAB_INSTALLS) | set(NODEPS),
}


def setup_cells() -> tuple[str, str]:
    """00's version cell, and the imports before it that it needs (not the ML libraries)."""
    cells = [c.source for c in nbformat.read(NOTEBOOKS[0], as_version=4).cells if c.cell_type == "code"]
    at = next(i for i, source in enumerate(cells) if "for package in RUNTIME_PACKAGES:" in source)
    imports = []
    for source in cells[:at]:
        for node in ast.parse(source).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            module = getattr(node, "module", None) or ""
            if isinstance(node, (ast.Import, ast.ImportFrom)) and all(
                n.split(".")[0] in ("platform", "importlib", "helpers") for n in [*names, module] if n
            ):
                imports.append(ast.unparse(node))
    return "\n".join(imports), cells[at]


@pytest.mark.parametrize("route", ROUTES)
def test_00s_version_cell_resolves_every_package_on_every_route(route, monkeypatch, capsys):
    """Binder installs ``tensorflow-cpu``: ``version("tensorflow")`` raised there (issue 34)."""
    import importlib
    from importlib import metadata

    def installed(name: str) -> str:
        if norm(name) in ROUTES[route]:
            return f"0.0+{route}"
        raise metadata.PackageNotFoundError(name)

    def not_importable(name: str, package: str | None = None):
        raise ImportError(f"{name} is not on the {route} route")

    assert NOTEBOOKS[0].stem == "00_setup"
    imports, cell = setup_cells()
    monkeypatch.setattr(metadata, "version", installed)
    monkeypatch.setattr(importlib, "import_module", not_importable)  # versions come from metadata
    namespace: dict = {}
    exec(imports, namespace)
    exec(cell, namespace)
    printed = capsys.readouterr().out
    for package in RUNTIME_PACKAGES:
        assert re.search(rf"^{re.escape(package)}\s+0\.0\+{route}\b", printed, re.M), (package, printed)


def colab_requires() -> dict[tuple[str, str], list]:
    """colab/requires.txt: {(name, version): [Requirement, ...]} of each pin of colab/requirements.txt."""
    from packaging.requirements import Requirement

    found: dict[tuple[str, str], list] = {}
    for line in (COLAB / "requires.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pin, _, requirement = line.partition("  ")
            name, version = pin.split("==")
            reqs = found.setdefault((norm(name), version), [])
            if requirement.strip():
                reqs.append(Requirement(requirement))
    return found


def test_colab_setup_installs_nothing_colab_preinstalls_and_pins_what_it_installs():
    assert COLAB_INSTALLS and all(COLAB_INSTALLS.values()), COLAB_INSTALLS
    assert all(COLAB_PREINSTALLED.values()), COLAB_PREINSTALLED
    assert set(COLAB_INSTALLS) & set(COLAB_PREINSTALLED) == set()
    assert {norm(p) for p in RUNTIME_PACKAGES} - ROUTES["colab"] == set()
    assert "recorded 20" in (COLAB / "preinstalled.txt").read_text().lower()  # with its date


def test_each_colab_install_runs_on_colab_s_preinstalled_versions():
    """nilearn 0.14 needs pandas>=2.3 where Colab has 2.2.2: ``pip install nilearn`` upgraded it."""
    requires = colab_requires()
    available = {**COLAB_PREINSTALLED, **COLAB_INSTALLS}
    for name, version in COLAB_INSTALLS.items():
        assert (name, version) in requires, f"colab/requires.txt does not record {name}=={version}"
        for req in requires[(name, version)]:
            if req.marker and not req.marker.evaluate({"python_version": COLAB_PYTHON}):
                continue
            dep = norm(req.name)
            if dep in available:
                assert req.specifier.contains(available[dep], prereleases=True), (
                    f"{name}=={version} needs {req}; Colab has {dep} {available[dep]}"
                )


def test_recorded_requires_are_the_installed_metadata_where_the_release_is_the_same():
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    checked = 0
    for (name, pinned), recorded in colab_requires().items():
        try:
            if version(name) != pinned:
                continue
        except PackageNotFoundError:
            continue
        metadata = {str(Requirement(r)) for r in requires(name) or [] if "extra ==" not in r}
        assert {str(r) for r in recorded} == metadata, name
        checked += 1
    assert checked >= 3  # .venv holds most of the same releases


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_colab_cell_runs_the_setup_script_and_installs_nothing_itself(path):
    setup = next(c.source for c in nbformat.read(path, as_version=4).cells if "google.colab" in c.source)
    assert "python3 /content/course/scripts/colab_setup.py" in setup
    assert "pip install" not in setup


def test_colab_setup_installs_only_what_is_missing_and_holds_what_is_installed(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("colab_setup", REPO_ROOT / "scripts" / "colab_setup.py")
    colab_setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(colab_setup)
    on_colab = {**COLAB_PREINSTALLED, "nibabel": "5.3.2"}  # should Colab ship nibabel too: kept
    pinned = colab_setup.read_pins(COLAB / "requirements.txt")
    todo = colab_setup.missing(pinned, lambda n: on_colab.get(norm(n)))
    assert {norm(line.split("==")[0]) for line in todo} == set(COLAB_INSTALLS) - {"nibabel"}
    freeze = "".join(f"{n}=={v}\n" for n, v in on_colab.items()) + "google-colab @ file:///colabtools/x.tar.gz\n"
    constraints = tmp_path / "installed.txt"
    constraints.write_text(colab_setup.frozen(freeze))
    assert pins(constraints) == on_colab  # every installed version held
    install, nodeps, course = colab_setup.commands(todo, constraints, python="python3")
    assert install[:4] == ["python3", "-m", "pip", "install"]
    assert install[install.index("-c") + 1] == str(constraints)
    assert not {"-U", "--upgrade", "--force-reinstall"} & set(install) and install[-len(todo) :] == todo
    assert nodeps[1].endswith("install-nodeps.sh") and "--no-deps" in course
    assert colab_setup.commands([], constraints)[0][1].endswith("install-nodeps.sh")  # nothing missing


def test_make_routes_builds_binder_and_colab_outside_make_test():
    import subprocess

    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^routes:\n\tbash scripts/routes.sh ", makefile, re.M)
    test_target = re.search(r"^test:(.*)$", makefile, re.M)[1]
    assert "routes" not in test_target
    script = REPO_ROOT / "scripts" / "routes.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for step in ("binder/requirements.txt", "binder/postBuild", "colab/preinstalled.txt", "colab_setup.py"):
        assert step in text, step
