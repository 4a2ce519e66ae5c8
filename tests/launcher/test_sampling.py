"""`instructrl sample` writes K responses per prompt from policies in stated shares, the same file for
the same seed; `instructrl label FILE --labeller fn` ranks them into comparisons that `instructrl rm`
trains on, each naming the labeller and its version."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from launcher.cli import main
from rlhf.data import load_comparisons
from tests.launcher.test_stage_commands import SMALL
from tests.launcher.user_task import write_task

LABELLER = '''
__version__ = "sums-1"

def closeness(prompts, responses, answer, **fields):
    """The nearer a response's first number is to the sum, the better; not a number is worst (longer, worse)."""
    def score(r, a):
        words = r.split()
        return -abs(int(words[0]) - a) if words and words[0].lstrip("-").isdigit() else -1000 - len(r)
    return [[score(r, a) for r in rs] for rs, a in zip(responses, answer)]
'''


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """Two policy checkpoints (an SFT model, and a copy standing in for a later policy) and the task files."""
    root = tmp_path_factory.mktemp("sample")
    files = write_task(root / "task", n_sft=200, n_prompts=60, n_eval=8)
    out = [f"run.out_dir={root}", "run.name=base", "model.bpe_vocab=512", *SMALL]
    assert main(["sft", f"sft.train_data={files['sft']}", *out, "sft.epochs=1"]) == 0
    shutil.copytree(root / "base" / "sft", root / "later")
    return root, files


def sample_args(root, files, out: str, seed: int = 0) -> list[str]:
    return ["sample", f"run.out_dir={root}", "run.name=base", *SMALL, f"sample.prompts={files['prompts']}",
            "sample.limit=12", "sample.k=4", f"sample.seed={seed}", f"sample.out={root / out}",
            f"sample.policies=[{{path: {root / 'base' / 'sft'}, share: 3}}, {{path: {root / 'later'}, share: 1}}]"]


def test_sample_deals_responses_by_share_and_is_deterministic(policies):
    root, files = policies
    assert main(sample_args(root, files, "a.jsonl")) == 0
    rows = [json.loads(line) for line in (root / "a.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(len(r["responses"]) == 4 == len(r["sources"]) for r in rows)
    assert Counter(s["model"] for r in rows for s in r["sources"]) == {str(root / "base" / "sft"): 36,
                                                                      str(root / "later"): 12}
    assert rows[0]["sources"][0]["step"] is not None and "answer" in rows[0]["fields"]
    assert main(sample_args(root, files, "b.jsonl")) == 0
    assert (root / "b.jsonl").read_text() == (root / "a.jsonl").read_text()
    assert main(sample_args(root, files, "c.jsonl", seed=1)) == 0
    assert (root / "c.jsonl").read_text() != (root / "a.jsonl").read_text()


def test_a_labeller_function_ranks_a_sample_for_the_reward_model(policies, tmp_path, capsys):
    root, files = policies
    to_label = root / "a.jsonl"
    if not to_label.exists():
        assert main(sample_args(root, files, "a.jsonl")) == 0
    (tmp_path / "lab.py").write_text(LABELLER)
    out = tmp_path / "ranked.jsonl"
    assert main(["label", str(to_label), "--labeller", f"{tmp_path / 'lab.py'}:closeness", "--out", str(out)]) == 0
    assert "comparisons" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and all(r["labeller"]["version"] == "sums-1" for r in records)
    fields = {r["id"]: json.loads(line)["fields"]["answer"]
              for line in to_label.read_text().splitlines() for r in [json.loads(line)]}
    for r in records:  # best first: no response nearer the sum than the one ranked above it
        gaps = [abs(int(x.split()[0]) - fields[r["id"]]) if x.split() and x.split()[0].isdigit() else 1000 + len(x)
                for x in r["responses"]]
        assert gaps == sorted(gaps) and len(set(gaps)) == len(gaps)  # ties dropped
    assert len(load_comparisons(out)) == len(records)
    run = [f"run.out_dir={root}", "run.name=base", *SMALL, "model.bpe_vocab=512", "run.resume=true"]
    assert main(["rm", f"rm.train_data={out}", *run, "rm.epochs=1"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ([], "sample.policies: name the policy checkpoint(s)"),
    (["sample.policies=[{path: /nonexistent}]"], "sample.policies.0.path=/nonexistent: not a model checkpoint"),
])
def test_sample_refuses_bad_policies(tmp_path, capsys, override, message):
    assert main(["sample", f"run.out_dir={tmp_path}", *SMALL, "sample.prompts=x.jsonl", *override]) == 2
    assert message in capsys.readouterr().err


def test_label_refuses_a_bad_labeller_or_file(tmp_path, capsys):
    to_label = tmp_path / "to_label.jsonl"
    to_label.write_text(json.dumps({"id": 1, "prompt": "p", "responses": ["a", "b"]}) + "\n")
    for args, message in [([str(tmp_path / "none.jsonl")], "none.jsonl: no such file"),
                          ([str(to_label), "--labeller", "foo"], "--labeller foo: function='foo': write it as"),
                          ([str(to_label), "--labeller", "lab.py:f"], "lab.py:f: no file")]:
        assert main(["label", *args]) == 2
        assert message in capsys.readouterr().err
