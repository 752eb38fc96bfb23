"""Results on disk: JSON records that the notebooks write and the runner's summary reads.

``<output_dir>/metrics/<dataset>.json`` holds one section per step ("training",
"evaluation", "inference"), each a dict; :func:`record` merges a section in and
:func:`read_records` reads them all back for ``summary.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from helpers.config import dataset_label
from helpers.io import write_text_atomic


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(data, indent=2))


def record(params: dict[str, Any], section: str, data: dict[str, Any]) -> Path:
    """Merge ``data`` under ``section`` into ``<output_dir>/metrics/<dataset>.json`` (for the summary)."""
    path = Path(params["output_dir"]) / "metrics" / f"{dataset_label(params['dataset'])}.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current[section] = data
    current["profile"] = params["profile"]
    return write_json(path, current)


def read_records(output_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Every ``metrics/<dataset>.json`` under ``output_dir``: {dataset: {section: data}}."""
    folder = Path(output_dir) / "metrics"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
