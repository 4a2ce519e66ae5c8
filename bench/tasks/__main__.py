"""Write every suite task (or those named) under <dir>/<name>/."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.tasks import SUITE

if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m bench.tasks <dir> [" + " ".join(SUITE) + "]")
    out, names = Path(sys.argv[1]), sys.argv[2:] or list(SUITE)
    for name in names:
        if name not in SUITE:
            raise SystemExit(f"unknown task {name!r}; the suite: {', '.join(SUITE)}")
        files = SUITE[name].write_task(out / name)
        print(f"{name}: " + ", ".join(str(p) for p in files.values()))
