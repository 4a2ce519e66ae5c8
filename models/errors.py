"""The one error type for what a user gave us wrong: a file, a config key, a path, a function.

Every layer raises `InputError` (or a subclass) with one paragraph that names the file and line, or
the config key, says what is wrong and what to do. The CLI prints that paragraph and exits with
status 2, never a traceback; anything else that escapes is a bug and keeps its traceback.
Lives in `models`, the bottom layer, so that every package can raise it.
"""

from __future__ import annotations


class InputError(ValueError):
    """Something the user controls is wrong; str(error) is the whole message shown to them."""
