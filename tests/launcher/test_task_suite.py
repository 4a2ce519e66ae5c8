"""The task suite (bench/tasks, #17): every task is written in the user file formats and passes
`instructrl check`; its rankings are noisy but mostly agree with its gold labeller; and each gold.py
(the file a run reads) scores responses exactly as the generator's own scorer does."""

from __future__ import annotations

import json
import random

import pytest

from bench.tasks import (
    SUITE,
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
from launcher.cli import main


@pytest.mark.parametrize("name", list(SUITE))
def test_each_task_passes_the_cli_check_with_noisy_but_informative_labels(name, tmp_path, capsys):
    root = tmp_path / name
    SUITE[name].write_task(root)
    rc = main(["check", *SUITE[name].overrides(root), f"run.out_dir={tmp_path / 'runs'}"])
    assert rc == 0, capsys.readouterr().err
    ceiling = json.loads((root / "labels.json").read_text())["label_accuracy"]
    assert 0.85 < ceiling < 0.97, ceiling  # the 10% flips show; the labels still carry the preference


@pytest.mark.parametrize(("module", "fields"), [
    (length, lambda rng: {"n": rng.randint(2, 7), "first": rng.choice(length.WORDS)}),
    (keywords, lambda rng: dict(zip(("must", "never"), rng.sample(keywords.COLOURS, 2), strict=True))),
    (politeness, lambda rng: {"request": f"{rng.choice(politeness.VERBS)} {rng.choice(politeness.OBJECTS)}"}),
])
def test_gold_file_agrees_with_the_generators_scorer(module, fields, tmp_path):
    namespace = {}
    exec(module.GOLD, namespace)  # noqa: S102 — the task's own gold.py text
    gold = namespace[module.overrides(tmp_path)[4].rsplit(":", 1)[1]]
    rng = random.Random(0)
    vocab = [w for text in (module.__dict__.get(k, []) for k in ("WORDS", "COLOURS", "FILLER", "VERBS", "OBJECTS",
                                                                 "RUDE", "SUBJECTS")) for w in text]
    vocab += ["please", "kindly", "thank you", "thanks", ","]
    rows = [fields(rng) for _ in range(300)]
    responses = []
    for f in rows:
        parts = [rng.choice(vocab) for _ in range(rng.randint(1, 7))]
        if "request" in f and rng.random() < 0.5:
            parts = [rng.choice(("please", "kindly")), f["request"], ",", rng.choice(("thank you", "thanks"))]
        if "first" in f and rng.random() < 0.5:
            parts = [f["first"]] + [rng.choice(vocab) for _ in range(f["n"] - 1)]
        responses.append(" ".join(parts))
    columns = {k: [f[k] for f in rows] for k in rows[0]}
    got = gold(["p"] * len(rows), responses, **columns)
    want = [module.score(r, *f.values()) for r, f in zip(responses, rows, strict=True)]
    assert got == pytest.approx(want)
    assert len(set(want)) >= 3  # the responses covered several gold levels


NEW_TASKS = {"copying": copying, "constraints": constraints, "counting": counting, "sorting": sorting, "style": style,
             "notes": notes}


def gold_of(module, tmp_path):
    namespace = {}
    exec(module.GOLD, namespace)  # noqa: S102 — the task's own gold.py text
    return namespace[next(o for o in module.overrides(tmp_path) if o.startswith("evaluation.gold_function="))
                     .rsplit(":", 1)[1]]


@pytest.mark.parametrize("name", list(NEW_TASKS))
def test_new_tasks_gold_file_scores_the_demonstrations_as_the_generator_does(name, tmp_path):
    """#27's tasks: gold.py against the generator's scorer on every demonstration (their fields are in
    the SFT file, so a run can measure the demonstrations' own gold too)."""
    module = NEW_TASKS[name]
    files = module.write_task(tmp_path / name, n_sft=400, n_rankings=50, n_prompts=20, n_eval=10)
    rows = [json.loads(line) for line in files["sft"].read_text().splitlines()]
    fields = [{k: v for k, v in r.items() if k not in ("prompt", "response")} for r in rows]
    columns = {k: [f[k] for f in fields] for k in fields[0]}
    got = gold_of(module, tmp_path)([r["prompt"] for r in rows], [r["response"] for r in rows], **columns)
    assert got == pytest.approx([module.score(r["response"], **f) for r, f in zip(rows, fields, strict=True)])
    assert len(set(got)) >= 3 and 0.4 < sum(got) / len(got) < 1.0  # noisy demonstrations, several gold levels


GLOOMY_HARBOUR = {"mood": "gloomy", "topic": "harbour"}


@pytest.mark.parametrize(("name", "fields", "response", "want"), [
    ("copying", {"text": "moon fish red boat"}, "moon fish red boat", 1.0),
    ("copying", {"text": "moon fish red boat"}, "moon red fish boat", 0.5),  # a swap: two of four in place
    ("copying", {"text": "moon fish red boat"}, "moon fish red boat boat", 0.8),  # an extra word: 4 of 5
    ("constraints", {"topic": "tea", "n": 4, "avoid": "red"}, "tea is warm green", 1.0),
    ("constraints", {"topic": "tea", "n": 4, "avoid": "red"}, "red is warm", 0.0),
    ("constraints", {"topic": "tea", "n": 4, "avoid": "red"}, "tea red", 1 / 3),
    ("counting", {"start": 3, "n": 4}, "3 4 5 6", 1.0),
    ("counting", {"start": 3, "n": 4}, "3 5 6", 0.25),  # a skip shifts what follows
    ("counting", {"start": 3, "n": 4}, "3 4 5 6 7 8 9 10", 0.5),  # counting on costs too
    ("sorting", {"numbers": "14 3 9 0"}, "0 3 9 14", 1.0),
    ("sorting", {"numbers": "14 3 9 0"}, "3 0 14 9", 0.0),
    ("sorting", {"numbers": "14 3 9 0"}, "14 3 9 0", 0.5),  # as given: 3 and 9 happen to be in place
    ("sorting", {"numbers": "14 3 9 0"}, "0 3 14 9", 0.5),
    ("style", {}, "serene vast noble radiant", 1.0),
    ("style", {}, "serene serene serene serene", 0.25),  # one formal word, however often
    ("style", {}, "nice vast cool fun good okay", 1 / 6),  # extra words dilute
    # notes: 0.3 topic + 0.5 x mood words (at most 3, less one per other mood's word) / 3 + 0.2 for 6-10 words
    ("notes", GLOOMY_HARBOUR, "the harbour was grey and bleak again today", 0.3 + 0.5 * 2 / 3 + 0.2),
    ("notes", GLOOMY_HARBOUR, "the harbour was grey and merry again today", 0.3 + 0.2),
    ("notes", GLOOMY_HARBOUR, "grey bleak dull dark", 0.5),  # 3 at most; no topic, short
    ("notes", {"mood": "calm", "topic": "garden"}, "the garden was quiet quiet quiet for us", 0.3 + 0.5 / 3 + 0.2),
    ("notes", {"mood": "calm", "topic": "garden"}, "the river was loud and wild today again as ever us", 0.0),
])
def test_new_tasks_gold_by_hand(name, fields, response, want, tmp_path):
    module = NEW_TASKS[name]
    assert gold_of(module, tmp_path)(["p"], [response], **{k: [v] for k, v in fields.items()}) == [pytest.approx(want)]
    assert module.score(response, **fields) == pytest.approx(want)


def test_counting_responses_are_long_and_fit_its_lengths(tmp_path):
    """The long-response task: every demonstration is 24 tokens or more under the run's own tokenizer
    kind (a BPE on the task's text), and its overrides leave room for the longest."""
    from models.tokenizer import train_bpe_tokenizer

    files = counting.write_task(tmp_path / "counting", n_sft=300, n_rankings=10, n_prompts=10, n_eval=10)
    rows = [json.loads(line) for line in files["sft"].read_text().splitlines()]
    tok = train_bpe_tokenizer([r["prompt"] + r["response"] for r in rows], 320)
    lengths = [len(tok(r["response"], add_special_tokens=False)["input_ids"]) for r in rows]
    assert min(lengths) >= 24
    limits = dict(o.split("=") for o in counting.LENGTHS)
    assert max(lengths) < int(limits["ppo.max_new_tokens"])


def test_sorting_has_scarce_demonstrations_and_rankings_of_the_slips_a_weak_policy_makes(tmp_path):
    """The start far below the demonstrations: 400 of them against 3,000 rankings by default, each
    ranking holding the sorted list, an adjacent swap, a dropped number and a number not in the list."""
    files = sorting.write_task(tmp_path / "sorting")
    assert len(files["sft"].read_text().splitlines()) == 400
    rankings = [json.loads(line) for line in files["comparisons"].read_text().splitlines()]
    assert len(rankings) == 3000
    gold = {r["prompt"]: sorted(int(x) for x in r["prompt"].split(":")[1].split()) for r in rankings}
    for r in rankings[:50]:
        lists = [[int(x) for x in resp.split()] for resp in r["responses"]]
        target = gold[r["prompt"]]
        assert target in lists
        assert any(len(xs) == len(target) - 1 and set(xs) < set(target) for xs in lists)  # dropped
        assert any(len(xs) == len(target) and set(xs) - set(target) for xs in lists)  # changed
        assert any(sorted(xs) == target and xs != target and sum(a != b for a, b in zip(xs, target, strict=True)) == 2
                   for xs in lists)  # adjacent swap


def test_recall_is_a_multi_turn_task_in_chat_records_scored_from_the_conversation(tmp_path):
    """#28's suite task: 2-4 stated facts, the reply names the one asked for; gold.py reads the
    conversation it is given (not a field) and agrees with the generator's scorer on every
    demonstration, and on replies of every gold level."""
    from rlhf.data import load_comparisons, load_prompts, load_sft

    files = recall.write_task(tmp_path / "recall", n_sft=300, n_rankings=30, n_prompts=20, n_eval=10)
    demos = load_sft(files["sft"])
    assert {len(r.messages) for r in demos} == {6, 8, 10}  # 2-4 facts, each acknowledged, then the question
    gold = gold_of(recall, tmp_path)
    stated = lambda r: [m["content"].split()[-1] for m in r.messages[:-2] if m["role"] == "user"]  # noqa: E731
    prompts = [r.as_prompt().judged for r in demos]
    got = gold(prompts, [r.response for r in demos], [r.fields["value"] for r in demos])
    want = [recall.score(r.response, r.fields["value"], [v for v in stated(r) if v != r.fields["value"]])
            for r in demos]
    assert got == want and set(got) == {1.0, 0.5}
    assert gold(prompts[:1], ["nowhere"], [demos[0].fields["value"]]) == [0.0]
    assert all(len(c.responses) == 3 and c.context for c in load_comparisons(files["comparisons"]))
    assert all(p.messages[-1]["content"].startswith("what is my") for p in load_prompts(files["eval"]))
