"""What machine a benchmark ran on (shared by the bench scripts, which run as `python bench/<name>.py`)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def update_results(path: Path, section: str, value: dict) -> None:
    """Set `section` of the JSON results file at `path` to `value`, keeping its other sections (atomic rewrite)."""
    current = json.loads(path.read_text()) if path.is_file() else {}
    current[section] = value
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(current, indent=2) + "\n")
    os.replace(tmp, path)


def with_earlier_runs(value: dict, earlier: dict) -> dict:
    """`value` keeping the measurement it replaces, and that one's own earlier runs, under `earlier_runs` (latest
    first): a rerun is quoted beside the first run rather than overwriting it (these CPUs are noisy)."""
    previous = {k: v for k, v in earlier.items() if k != "earlier_runs"}
    return {**value, "earlier_runs": [previous, *earlier.get("earlier_runs", [])]}
