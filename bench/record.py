"""The benchmarks' results as JSON: what was measured, on what machine, placed how, and when.

Every script of bench/ that takes ``--json PATH`` writes one document:

    {"kind": "run" | "async" | "near", "meta": {...}, "data": {...}}

``meta`` names the machine (CPU model, vCPUs, kernel), Python, Django, the placement and the
date; bench/charts.py draws the charts the docs embed from these files, and prints ``meta`` on
every chart.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "vcpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
    }


def write(path: str, kind: str, placement: str, data: dict[str, Any], **extra: Any) -> None:
    import django

    meta = {
        **machine(),
        "django": django.get_version(),
        "placement": placement,
        "date": time.strftime("%Y-%m-%d"),
        **extra,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"kind": kind, "meta": meta, "data": data}, f, indent=1, sort_keys=True)
        f.write("\n")
