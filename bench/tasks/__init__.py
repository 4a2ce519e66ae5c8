"""The task suite (#17): small tasks of different kinds, each in the user file formats with noisy
demonstrations, noisy rankings and a programmatic gold labeller (bench/tasks/common.py says which
files). `SUITE` maps each name to its module (write_task(root), overrides(root)).

    python -m bench.tasks <dir> [names ...]     # writes <dir>/<name>/ for every task (or those named)
"""

from __future__ import annotations

from bench.tasks import arithmetic, keywords, length, politeness

SUITE = {"arithmetic": arithmetic, "length": length, "keywords": keywords, "politeness": politeness}
