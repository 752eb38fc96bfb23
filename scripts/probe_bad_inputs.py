"""Count how the helpers answer the bad inputs of ``tests/bad_inputs.py``.

    python scripts/probe_bad_inputs.py [--verbose]

Each case is classed as **clear** (a ValueError naming the argument or file and
giving the expected reason), **wrong reason** (a ValueError naming it but saying
something else), **silent** (no error at all) or **deep** (any other exception,
raised from inside NumPy, nibabel, pydicom, Keras...). Run it from a checkout to
count that checkout's answers; it imports ``helpers`` from the current folder.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path.cwd()
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parents[1] / "tests")]

from bad_inputs import CASES  # noqa: E402


def classify(case) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            call, names = case.make(Path(tmp))
            call()
        except ValueError as err:
            message = str(err)
            if names in message and all(w in message for w in case.reason):
                return "clear", message
            return "wrong reason", message
        except BaseException as err:  # noqa: BLE001 - we are counting them
            return "deep", f"{type(err).__name__}: {err}"
    return "silent", ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="print every case's answer")
    args = parser.parse_args()
    counts: collections.Counter[str] = collections.Counter()
    by_category: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for case in CASES:
        verdict, message = classify(case)
        counts[verdict] += 1
        by_category[case.category][verdict] += 1
        if args.verbose:
            print(f"{verdict:12s} {case.category}:{case.id}  {message[:160]}")
    kinds = ("clear", "wrong reason", "silent", "deep")
    print(f"\n| category | cases | {' | '.join(kinds)} |")
    print("|---" * (len(kinds) + 2) + "|")
    for category, c in by_category.items():
        print(f"| {category} | {sum(c.values())} | " + " | ".join(str(c[k]) for k in kinds) + " |")
    print(f"| **all** | **{len(CASES)}** | " + " | ".join(f"**{counts[k]}**" for k in kinds) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
