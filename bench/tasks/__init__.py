"""The task suite (#17, #27): small tasks of different kinds, each in the user file formats with noisy
demonstrations, noisy rankings and a programmatic gold labeller (bench/tasks/common.py says which
files). `SUITE` maps each name to its module (write_task(root), overrides(root)).

    python -m bench.tasks <dir> [names ...]     # writes <dir>/<name>/ for every task (or those named)
"""

from __future__ import annotations

from bench.tasks import (
    arithmetic,
    constraints,
    copying,
    counting,
    keywords,
    length,
    notes,
    politeness,
    recall,
    sorting,
    style,
)

SUITE = {"arithmetic": arithmetic, "length": length, "keywords": keywords, "politeness": politeness,
         # #27: kinds the first four lack (copying from the prompt, several constraints, long responses,
         # sorting from 400 demonstrations (a start far below them), a style with no single keyword)
         "copying": copying, "constraints": constraints, "counting": counting, "sorting": sorting, "style": style,
         # #28: a conversation of 2-4 user turns whose reply depends on an earlier turn, in chat records
         "recall": recall,
         # #27: the issue's own example of a task nobody tuned for (notes in a requested mood about a topic),
         # added after the defaults were chosen on the nine above, to test them; nothing was tuned on it
         "notes": notes}
