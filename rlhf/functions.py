"""User task functions: reward functions (PPO's score) and the gold function (evaluation).

A function is named "module.path:name" or "path/to/file.py:name" and called batched:
    fn(prompts: list[str], responses: list[str], **fields) -> list[float]
where each keyword is one extra field of the prompt records (e.g. answer=[...]), a list aligned with
`prompts`. Every call runs under a timeout, and whatever comes back is checked: an exception, a wrong
length, a value that is not a finite number stops the run with a FunctionError naming the function,
the prompt and the response. Must not import ray, deepspeed or megatron.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import numbers
import sys
import threading
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.errors import InputError


class FunctionError(InputError):
    """A user function could not be loaded, failed, hung, or returned something that is not a score."""


class FunctionRef(BaseModel):
    """A user function and how long one call may take; a plain string is read as {function: <string>}."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    function: str  # "module.path:name" or "path/to/file.py:name" (relative to the working directory)
    timeout_s: float = Field(60.0, gt=0)  # the longest one batched call may take

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"function": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> FunctionRef:
        module, sep, name = self.function.rpartition(":")
        if not sep or not module or not name.isidentifier():
            raise ValueError(f"function={self.function!r}: write it as 'module.path:name' or 'path/to/file.py:name'")
        return self

    @property
    def name(self) -> str:
        return self.function.rpartition(":")[2]

    def resolved(self, base: str | Path) -> FunctionRef:
        """The same spec with a file path made absolute against `base` (the driver's working directory),
        so ranks started elsewhere load the same file."""
        module, _, name = self.function.rpartition(":")
        if not module.endswith(".py"):
            return self
        path = (Path(base) / module).resolve()
        return self.model_copy(update={"function": f"{path}:{name}"})


class FunctionSpec(FunctionRef):
    """A reward or gold function: fn(prompts, responses, **fields) -> one score per response."""

    weight: float = 1.0  # its weight in the PPO score (reward functions only)


def load_function(spec: FunctionRef, search_path: str | Path | None = None) -> Callable:
    """Import the function; `search_path` (the driver's working directory) is where modules are looked
    up first, as `uvicorn module:app` does, so a user's rewards.py beside their config is found."""
    module_name, _, name = spec.function.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise FunctionError(f"{spec.function}: no file {path}")
            name_in_sys = f"instructrl_user_{path.stem}_{zlib.crc32(str(path.resolve()).encode()):08x}"
            mod_spec = importlib.util.spec_from_file_location(name_in_sys, path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_spec.name] = module
            mod_spec.loader.exec_module(module)
        else:
            if search_path is not None and str(search_path) not in sys.path:
                sys.path.insert(0, str(search_path))
            module = importlib.import_module(module_name)
    except FunctionError:
        raise
    except Exception as e:
        raise FunctionError(f"{spec.function}: importing it failed: {type(e).__name__}: {e}"
                            f"{_user_frame(e)}") from None
    fn = getattr(module, name, None)
    if fn is None:
        public = sorted(n for n in vars(module) if callable(getattr(module, n)) and not n.startswith("_"))
        raise FunctionError(f"{spec.function}: {module_name} has no {name!r} (callables there: {public})")
    if not callable(fn):
        raise FunctionError(f"{spec.function}: {name!r} is a {type(fn).__name__}, not a function")
    return fn


def _user_frame(e: BaseException) -> str:
    """' (at file:line)' of the innermost frame outside this file: where the user's code failed."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename != __file__]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def call_with_timeout(fn: Callable, args: tuple, kwargs: dict, timeout_s: float) -> tuple[bool, Any]:
    """(finished, result or exception). The call runs in a daemon thread: a hung checker cannot be
    killed from Python, but it no longer holds the run, and the process may still exit."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 — reported to the caller, whatever it is
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True, name="instructrl-task-function")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return False, None
    return True, box.get("error", box.get("value"))


def excerpt(prompt: str, response: str) -> str:
    def clip(text: str) -> str:
        return repr(text if len(text) <= 200 else text[:200] + "…")

    return f"prompt {clip(prompt)}, response {clip(response)}"


class TaskFunction:
    """A loaded task function with the checks every call goes through."""

    def __init__(self, spec: FunctionSpec, search_path: str | Path | None = None):
        self.spec, self.fn = spec, load_function(spec, search_path)

    @property
    def name(self) -> str:
        return self.spec.name

    def check_fields(self, names: list[str], source: str) -> None:
        """Fail now, not after hours of generation, if fn(prompts, responses, **fields) cannot take the
        fields of the records in `source`."""
        try:
            inspect.signature(self.fn).bind(["prompt"], ["response"], **dict.fromkeys(names, [None]))
        except TypeError as e:
            raise FunctionError(f"{self.spec.function} cannot be called as fn(prompts, responses, **fields) with the "
                                f"fields of {source} ({', '.join(names) or 'none'}): {e}. Give it those parameters or "
                                f"**fields.") from None
        except ValueError:
            pass  # no signature to read (a builtin or C function): its first call will tell

    def __call__(self, prompts: list[str], responses: list[str], fields: dict[str, list]) -> list[float]:
        """One score per (prompt, response); raises FunctionError naming the culprit."""
        n = len(prompts)
        finished, out = call_with_timeout(self.fn, (prompts, responses), fields, self.spec.timeout_s)
        if not finished:
            raise FunctionError(f"{self.spec.function} did not return within {self.spec.timeout_s:g} s on a batch "
                                f"of {n} (first: {excerpt(prompts[0], responses[0])}); make it faster or raise its "
                                f"timeout_s")
        if isinstance(out, BaseException):
            raise self._locate_failure(prompts, responses, fields, out)
        try:
            values = list(out)
        except TypeError:
            raise FunctionError(f"{self.spec.function} returned a {type(out).__name__}, not a list of {n} "
                                f"numbers (one per response)") from None
        if len(values) != n:
            raise FunctionError(f"{self.spec.function} returned {len(values)} values for {n} responses; it must "
                                f"return one number per response (first: {excerpt(prompts[0], responses[0])})")
        scores = []
        for i, v in enumerate(values):
            ok = isinstance(v, numbers.Real) or (hasattr(v, "item") and getattr(v, "ndim", 1) == 0)
            value = float(v.item() if hasattr(v, "item") else v) if ok else None
            if value is None or not math.isfinite(value):
                what = f"{v!r}, not a number" if value is None else f"{value}, not a finite number"
                raise FunctionError(f"{self.spec.function} returned {what} for {excerpt(prompts[i], responses[i])}")
            scores.append(value)
        return scores

    def _locate_failure(self, prompts, responses, fields, error: BaseException) -> FunctionError:
        """Re-run one sample at a time to name the prompt and response that make it fail."""
        kind = f"{type(error).__name__}: {error}{_user_frame(error)}"
        for i in range(len(prompts)):
            one = {k: v[i:i + 1] for k, v in fields.items()}
            finished, out = call_with_timeout(self.fn, (prompts[i:i + 1], responses[i:i + 1]), one,
                                               self.spec.timeout_s)
            if finished and isinstance(out, BaseException):
                kind = f"{type(out).__name__}: {out}{_user_frame(out)}"
                return FunctionError(f"{self.spec.function} raised {kind} on {excerpt(prompts[i], responses[i])}")
        return FunctionError(f"{self.spec.function} raised {kind} on a batch of {len(prompts)} (first: "
                             f"{excerpt(prompts[0], responses[0])}); no single sample of it fails alone")
