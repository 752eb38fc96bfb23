"""Issue 21: every notebook ends with hands-on exercises, and every solution runs.

Each notebook's ``## Exercises`` cell holds 3-5 exercises ("change this, predict, run it"),
each with its solution collapsed in ``<details>`` as a Python code block that runs on its own,
at small sizes. This test runs every solution, so they cannot rot.
"""

import re
from pathlib import Path

import nbformat
import pytest

from helpers.config import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
SOLUTION = re.compile(r"<details>\s*<summary>Show the solution</summary>\s*```python\n(.*?)```", re.DOTALL)


def exercises(path: Path) -> list[str]:
    """The solution code of each exercise of notebook ``path``, in order."""
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.source.startswith("## Exercises")]
    assert len(cells) == 1, f"{path.name}: one '## Exercises' cell"
    text = cells[0].source
    numbered = re.findall(r"^\*\*(\d+)\. ", text, re.MULTILINE)
    solutions = SOLUTION.findall(text)
    assert 3 <= len(solutions) <= 5 and numbered == [str(k) for k in range(1, len(solutions) + 1)], path.name
    return solutions


CASES = [(path, k) for path in NOTEBOOKS for k in range(len(exercises(path)))]


@pytest.mark.parametrize(("path", "k"), CASES, ids=[f"{p.stem[:2]}-{k + 1}" for p, k in CASES])
def test_every_exercise_solution_runs(path, k, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # whatever a solution writes stays out of the repository
    code = exercises(path)[k]
    exec(compile(code, f"{path.name} exercise {k + 1}", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out.strip(), "a solution shows its result"


def test_exercises_come_last_before_the_summary():
    for path in NOTEBOOKS:
        cells = nbformat.read(path, as_version=4).cells
        assert cells[-2].source.startswith("## Exercises"), path.name


#: A fenced Python block of a markdown cell.
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem[:2])
def test_every_notebook_has_an_exercise_where_the_student_writes_code(path):
    """Issue 33: beside change-one-thing exercises, one where the student writes a function body
    (a stub ending in ``...  # your code here``), then runs a check; the solution (run by the test
    above) holds the same check's assertions."""
    text = next(
        c.source for c in nbformat.read(path, as_version=4).cells if c.source.startswith("## Exercises")
    )
    blocks = list(BLOCK.finditer(text))
    stubs = [
        k for k, b in enumerate(blocks) if "def " in b.group(1) and "...  # your code here" in b.group(1)
    ]
    assert stubs, f"{path.name}: no stub with '...  # your code here'"
    check = blocks[stubs[0] + 1].group(1)
    assert "assert " in check, f"{path.name}: a check follows the stub"
    solution = SOLUTION.search(text[blocks[stubs[0] + 1].end() :]).group(1)
    for line in check.splitlines():
        if line.startswith("assert "):
            assert line in solution, f"{path.name}: the solution runs the check's {line!r}"
