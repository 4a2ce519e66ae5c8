"""Short notes in a requested mood about a topic named in the prompt (#27's own example of a task
nobody tuned for, added after the defaults were chosen, to test them): "note : gloomy about the
harbour" → "the harbour was grey and bleak again today".

Gold (gold.py:note), three parts: 0.3 for the topic's word among the response's words; 0.5 × (distinct
words of the requested mood, at most 3, less one for each distinct word of another mood, at least 0) / 3;
0.2 for a length of 6 to 10 words. No one word carries it, and which words count depends on the prompt.
Demonstrations are a noisy team's (the topic dropped 20% of the time, 0–3 mood words, another mood's
word 30% of the time, the length off 20% of the time; their own gold about 0.6, as in the issue); rankings
of 4 candidates of mixed quality are ordered by the gold score, adjacent pairs swapped 10% of the time.
The sizes are the issue's: 1,900 demonstrations, 1,900 rankings of K = 4, a 512-token BPE vocabulary.

    python -m bench.tasks <dir> notes
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.tasks.common import labelled_task, task_overrides

MOODS = {"cheerful": ["bright", "merry", "sunny", "happy", "lively", "warm", "glad", "jolly"],
         "gloomy": ["grey", "bleak", "dull", "cold", "dreary", "sad", "dark", "empty"],
         "calm": ["quiet", "still", "soft", "slow", "peaceful", "gentle", "restful", "mild"],
         "angry": ["loud", "harsh", "bitter", "fierce", "rough", "noisy", "wild", "cruel"]}
TOPICS = ["garden", "train", "winter", "market", "river", "library", "storm", "harbour", "kitchen", "festival"]
LINKS = ["and", "so", "very", "quite"]
PADDING = ["today", "again", "at", "noon", "for", "us", "this", "week", "as", "ever"]

GOLD = '''
MOODS = {"cheerful": {"bright", "merry", "sunny", "happy", "lively", "warm", "glad", "jolly"},
         "gloomy": {"grey", "bleak", "dull", "cold", "dreary", "sad", "dark", "empty"},
         "calm": {"quiet", "still", "soft", "slow", "peaceful", "gentle", "restful", "mild"},
         "angry": {"loud", "harsh", "bitter", "fierce", "rough", "noisy", "wild", "cruel"}}


def note(prompts, responses, mood, topic, **fields):
    """0.3 for the topic's word; 0.5 x (distinct words of the mood, at most 3, less one per distinct word
    of another mood, at least 0) / 3; 0.2 for 6 to 10 words."""
    out = []
    for r, m, t in zip(responses, mood, topic):
        words = set(r.split())
        other = set().union(*(v for k, v in MOODS.items() if k != m))
        tone = max(0, min(3, len(words & MOODS[m])) - len(words & other)) / 3
        out.append(0.3 * (t in words) + 0.5 * tone + 0.2 * (6 <= len(r.split()) <= 10))
    return out
'''


def score(response: str, mood: str, topic: str) -> float:
    words = response.split()
    other = {w for k, v in MOODS.items() if k != mood for w in v}
    tone = max(0, min(3, len(set(words) & set(MOODS[mood]))) - len(set(words) & other)) / 3
    return 0.3 * (topic in words) + 0.5 * tone + 0.2 * (6 <= len(words) <= 10)


def write_note(rng, mood: str, topic: str, n_mood: int, off_mood: bool, with_topic: bool, length: int) -> str:
    """'the <topic> was <link> <mood word> ...' padded (or cut) to `length` words."""
    chosen = rng.sample(MOODS[mood], n_mood)
    if off_mood:
        chosen.append(rng.choice([w for k, v in MOODS.items() if k != mood for w in v]))
    rng.shuffle(chosen)
    words = ["the", topic if with_topic else rng.choice([t for t in TOPICS if t != topic]), "was"]
    for i, w in enumerate(chosen):
        words += [rng.choice(LINKS), w] if i else [w]
    while len(words) < length:
        words.append(rng.choice(PADDING))
    return " ".join(words[:max(length, 3)])


def write_task(root: Path, n_sft: int = 1900, n_rankings: int = 1900, n_prompts: int = 2000, n_eval: int = 200,
               seed: int = 0) -> dict[str, Path]:
    rng = random.Random(seed)

    def item() -> dict:
        mood, topic = rng.choice(list(MOODS)), rng.choice(TOPICS)
        return {"prompt": f"note : {mood} about the {topic}", "mood": mood, "topic": topic}

    def demonstrate(it: dict) -> str:
        in_range = rng.random() >= 0.2
        return write_note(rng, it["mood"], it["topic"], n_mood=rng.randint(0, 3), off_mood=rng.random() < 0.3,
                          with_topic=rng.random() >= 0.2,
                          length=rng.randint(6, 10) if in_range else rng.choice([3, 4, 5, 11, 12, 13]))

    def candidates(it: dict) -> list[str]:
        return [write_note(rng, it["mood"], it["topic"], n_mood=rng.randint(0, 3), off_mood=rng.random() < 0.4,
                           with_topic=rng.random() < 0.5, length=rng.randint(3, 13)) for _ in range(4)]

    return labelled_task(root, rng, item, demonstrate, candidates, score, GOLD, n_sft, n_rankings, n_prompts, n_eval)


def overrides(root: Path) -> list[str]:
    return task_overrides(root, "note", bpe_vocab=512) + [
        "ppo.max_new_tokens=24", "evaluation.max_new_tokens=24", "ppo.max_prompt_len=16",
        "evaluation.max_prompt_len=16"]
