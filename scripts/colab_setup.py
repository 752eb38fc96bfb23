"""The notebooks' Colab setup: install what the course needs and Colab lacks, and change nothing else.

    python3 scripts/colab_setup.py [--dry-run]

1. Of ``colab/requirements.txt``, the packages that are not installed at all (by distribution
   name) are pip-installed at their pins, with every distribution already installed passed as a
   constraint (``pip list --format=freeze``): pip can then neither upgrade nor downgrade what
   Colab preinstalls, and stops with an error instead of changing it.
2. ``scripts/install-nodeps.sh``: segmentation-models-3D, classification-models-3D and patchify,
   without their stale pins (see that script).
3. The course's ``helpers``, ``--no-deps``, editable.

Every notebook's Colab cell runs this after cloning the course; ``make routes`` runs it in a
Python 3.12 environment holding ``colab/preinstalled.txt`` (what Colab preinstalls) and checks
that no preinstalled version changed. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "colab" / "requirements.txt"


def read_pins(path: str | Path) -> list[tuple[str, str]]:
    """``(name, "name==version")`` for each requirement line of ``path`` (comments dropped)."""
    pins = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            pins.append((re.split(r"[=<>!~\[; ]", line)[0], line))
    return pins


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def missing(pins: Sequence[tuple[str, str]], version_of: Callable[[str], str | None]) -> list[str]:
    """The requirement lines of ``pins`` whose distribution ``version_of`` does not find."""
    return [line for name, line in pins if version_of(name) is None]


def frozen(freeze_text: str) -> str:
    """The ``name==version`` lines of ``pip list --format=freeze`` output: the constraints file."""
    return "".join(line + "\n" for line in freeze_text.splitlines() if re.match(r"^[\w.-]+==\S+$", line))


def commands(
    to_install: Sequence[str], constraints: str | Path, python: str = sys.executable
) -> list[list[str]]:
    """The commands of steps 1-3 (step 1 left out when nothing is missing)."""
    steps = []
    if to_install:
        steps.append([python, "-m", "pip", "install", "-q", "-c", str(constraints), *to_install])
    steps.append(["bash", str(ROOT / "scripts" / "install-nodeps.sh"), python])
    steps.append([python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)])
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run none")
    args = parser.parse_args(argv)
    pins = read_pins(REQUIREMENTS)
    to_install = missing(pins, installed_version)
    kept = [f"{name} {installed_version(name)}" for name, line in pins if line not in to_install]
    if kept:
        print("kept as installed:", ", ".join(kept))
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout
    with tempfile.NamedTemporaryFile("w", suffix="-installed.txt", delete=False) as f:
        f.write(frozen(freeze))
    for command in commands(to_install, f.name):
        print("+", " ".join(command), flush=True)
        if not args.dry_run:
            subprocess.run(command, check=True)
    Path(f.name).unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
