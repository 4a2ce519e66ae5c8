"""Task functions: loaded by module or file, called batched with the prompts' fields; every failure
(import, exception, hang, wrong length, a value that is not a finite number) names the function, and
a failing call names the prompt and the response."""

from __future__ import annotations

import textwrap

import pytest

from rlhf.functions import FunctionError, FunctionSpec, TaskFunction

CHECKER = textwrap.dedent('''
    import time

    def exact(prompts, responses, answer, **fields):
        return [float(r.strip() == str(a)) for r, a in zip(responses, answer)]

    def boom(prompts, responses, **fields):
        return [1.0 / (len(r) - 3) for r in responses]  # fails on a 3-character response

    def short(prompts, responses, **fields):
        return [1.0]

    def text(prompts, responses, **fields):
        return ["1.0" for _ in responses]

    def nan(prompts, responses, **fields):
        return [float("nan") if r == "bad" else 0.0 for r in responses]

    def slow(prompts, responses, **fields):
        time.sleep(5)
        return [0.0 for _ in responses]

    def scalar(prompts, responses, **fields):
        return 1.0

    NOT_A_FUNCTION = 3
''')


@pytest.fixture
def checker(tmp_path):
    (tmp_path / "checks.py").write_text(CHECKER)
    return tmp_path


def fn(checker, name: str, **kw) -> TaskFunction:
    return TaskFunction(FunctionSpec(function=f"checks.py:{name}", **kw).resolved(checker), checker)


def test_by_file_and_by_module_with_fields(checker, monkeypatch):
    by_file = fn(checker, "exact")
    assert by_file(["1+1", "2+2"], ["2", "5"], {"answer": [2, 4]}) == [1.0, 0.0]
    monkeypatch.syspath_prepend(str(checker))
    by_module = TaskFunction(FunctionSpec.model_validate("checks:exact"))
    assert by_module.name == "exact"
    assert by_module(["1+1"], [" 2 "], {"answer": [2]}) == [1.0]
    # numpy arrays and numpy scalars are numbers too
    (checker / "np_checks.py").write_text("import numpy as np\n"
                                          "def f(prompts, responses, **k):\n    return np.ones(len(prompts))\n")
    assert TaskFunction(FunctionSpec(function="np_checks.py:f").resolved(checker))(["a", "b"], ["c", "d"], {}) \
        == [1.0, 1.0]


@pytest.mark.parametrize(("name", "call", "message"), [
    ("boom", (["p1", "p2"], ["okay", "abc"], {}),
     r"checks\.py:boom raised ZeroDivisionError: float division by zero \(at .*checks\.py:\d+\) on prompt 'p2', "
     r"response 'abc'"),
    ("short", (["p1", "p2"], ["a", "b"], {}), r"checks\.py:short returned 1 values for 2 responses"),
    ("text", (["p1"], ["a"], {}), r"checks\.py:text returned '1\.0', not a number for prompt 'p1', response 'a'"),
    ("nan", (["p1", "p2"], ["fine", "bad"], {}),
     r"checks\.py:nan returned nan, not a finite number for prompt 'p2', response 'bad'"),
    ("scalar", (["p1"], ["a"], {}), r"checks\.py:scalar returned a float, not a list of 1 numbers"),
])
def test_bad_results_name_the_function_prompt_and_response(checker, name, call, message):
    with pytest.raises(FunctionError, match=message):
        fn(checker, name)(*call)


def test_a_hung_function_times_out(checker):
    with pytest.raises(FunctionError, match=r"checks\.py:slow did not return within 0\.2 s on a batch of 1 \(first: "
                                            r"prompt 'p', response 'r'\); make it faster or raise its timeout_s"):
        fn(checker, "slow", timeout_s=0.2)(["p"], ["r"], {})


@pytest.mark.parametrize(("function", "message"), [
    ("missing.py:f", r"missing\.py:f: no file .*missing\.py"),
    ("checks.py:nope", r"checks\.py:nope: .* has no 'nope' \(callables there: \[.*'exact'"),
    ("checks.py:NOT_A_FUNCTION", r"'NOT_A_FUNCTION' is a int, not a function"),
    ("no_such_module_xyz:f", r"no_such_module_xyz:f: importing it failed: ModuleNotFoundError"),
    ("broken.py:f",
     r"broken\.py:f: importing it failed: NameError: name 'undefined' is not defined \(at .*broken\.py:2\)"),
])
def test_functions_that_cannot_load_are_named(checker, function, message):
    (checker / "broken.py").write_text("x = 1\ny = undefined\n")
    with pytest.raises(FunctionError, match=message):
        TaskFunction(FunctionSpec(function=function).resolved(checker), checker)


@pytest.mark.parametrize("text", ["no-colon", "file.py:", ":name", "mod:not an identifier"])
def test_malformed_specs_are_config_errors(text):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="write it as 'module.path:name' or 'path/to/file.py:name'"):
        FunctionSpec.model_validate(text)
