"""The README's demo runs, and every caching layer serves repeat requests from the cache."""

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "demo" / "demo.py"


def test_demo_serves_every_layer_from_cache():
    proc = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for layer in ("per-site middleware", "@cache_page", "{% cache %} fragment", "low-level API"):
        assert f"{layer} " in out
    assert "from cache" in out
    assert "Every layer served repeat requests from LRUObjectCache." in out
    stats_line = next(line for line in out.splitlines() if line.startswith("Cache stats:"))
    assert "hits=0," not in stats_line
