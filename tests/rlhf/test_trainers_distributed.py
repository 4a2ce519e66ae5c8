"""SFT and reward-model trainers on 2 Ray ranks (data parallel) improve their held-out metrics."""

from __future__ import annotations

import pytest

from launcher.worker_group import build_groups, shutdown_groups
from models.config import ModelConfig
from models.tokenizer import build_word_tokenizer
from parallel.host import ModelSource
from parallel.mesh import GroupSpec
from rlhf.data import load_comparisons, load_sft
from rlhf.reward_model import RMConfig, encode_rankings, evaluate_rm, read_reward_stats, train_reward_model
from rlhf.sft import SFTConfig, total_steps, train_sft
from rlhf.task import WORDS, EmbeddedTask, TaskConfig
from rlhf.workers import PolicyWorker, RewardModelWorker

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    return EmbeddedTask(TaskConfig(n_sft=1500, n_comparisons=1200, n_eval=100)).write(root / "data"), root


def test_sft_then_rm_on_two_ranks(ray_cluster, task):
    files, root = task
    tok = build_word_tokenizer(WORDS)
    model = ModelConfig(vocab_size=len(tok), max_seq_len=32, d_model=64, n_layers=2, n_heads=4,
                        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    spec = GroupSpec(ranks=2, cpus_per_rank=1.0)
    sft_cfg = SFTConfig(max_len=32, batch_size=16, epochs=4, eval_every=10_000, group=spec)
    train, evals = load_sft(files["sft_train"]), load_sft(files["sft_eval"])
    logged = []
    groups = build_groups({"policy": (PolicyWorker, spec, (ModelSource(config=model), sft_cfg.engine, sft_cfg.optim,
                                                           total_steps(len(train), sft_cfg)), {})})
    try:
        info = groups["policy"].broadcast(PolicyWorker.describe).get()
        metrics = train_sft(groups["policy"], tok, train, evals, sft_cfg, root / "sft", lambda m, s: logged.append(m))
    finally:
        shutdown_groups(groups)
    assert [i["dp_rank"] for i in info] == [0, 1] and info[0]["pid"] != info[1]["pid"]
    first = next(m["eval/loss"] for m in logged if "eval/loss" in m)
    assert metrics["eval/loss"] < 0.5 * first, (first, metrics)

    rm_cfg = RMConfig(max_len=32, batch_size=16, epochs=2, eval_every=10_000,
                      optim=RMConfig().optim.model_copy(update={"lr": 3e-4}), group=spec)
    cmp_train, cmp_eval = load_comparisons(files["comparisons_train"]), load_comparisons(files["comparisons_eval"])
    steps = len(cmp_train) // rm_cfg.batch_size * rm_cfg.epochs + rm_cfg.epochs
    groups = build_groups({"reward": (RewardModelWorker, spec, (ModelSource(path=str(root / "sft")), rm_cfg.engine,
                                                           rm_cfg.optim, steps), {})})
    try:
        before, _ = evaluate_rm(groups["reward"], encode_rankings(tok, cmp_eval, 32), tok.pad_token_id, 16)
        after = train_reward_model(groups["reward"], tok, cmp_train, cmp_eval, rm_cfg, root / "rm", lambda m, s: None)
    finally:
        shutdown_groups(groups)
    # chance is 0.5 per pair; the labeller's own ceiling on these noisy rankings is about 0.88
    assert after["eval/accuracy"] > 0.62 and after["eval/accuracy"] > before["eval/accuracy"] + 0.08, (before, after)
    assert after["eval/loss"] < before["eval/loss"]
    # the length-bias check reads each held-out pair's lengths in label order: recount it from the texts
    n = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    longer = [n(w) > n(lo) for c in cmp_eval for i, w in enumerate(c.responses) for lo in c.responses[i + 1:]
              if n(w) != n(lo)]
    assert after["eval/length/labels_prefer_longer"] == pytest.approx(sum(longer) / len(longer))
    assert 0.0 <= after["eval/length/rm_prefers_longer"] <= 1.0
    stats = read_reward_stats(root / "rm")
    assert stats["n"] == 400 and stats["std"] > 0


def _reduce_rank_values(worker, op: str) -> float:
    """Rank r offers 1 + 2r: the mean over two ranks is 2, the max 3."""
    return worker._reduced(1.0 + 2.0 * worker.mesh.dp_rank, op)


def _everywhere_if_rank_zero(worker) -> bool:
    return worker._everywhere(worker.mesh.dp_rank == 0)


def test_a_value_reduced_over_two_ranks_is_the_same_decision_on_each(ray_cluster):
    """Guards ModelWorker._reduced, which ppo.target_kl's stop reads ("mean" of the ranks' approximate KL)
    and every skipped update ("max"): with ranks holding different values, each rank gets the group's
    figure, so no rank can stop or skip alone."""
    model = ModelConfig(vocab_size=32, max_seq_len=16, d_model=32, n_layers=1, n_heads=2, pad_token_id=0,
                        eos_token_id=1)
    spec = GroupSpec(ranks=2, cpus_per_rank=1.0)
    sft_cfg = SFTConfig(max_len=16, batch_size=4, epochs=1, group=spec)
    groups = build_groups({"policy": (PolicyWorker, spec, (ModelSource(config=model), sft_cfg.engine,
                                                           sft_cfg.optim, 1), {})})
    try:
        means = groups["policy"].broadcast(_reduce_rank_values, "mean").get()
        maxima = groups["policy"].broadcast(_reduce_rank_values, "max").get()
        agreed = groups["policy"].broadcast(_everywhere_if_rank_zero).get()
    finally:
        shutdown_groups(groups)
    assert means == [2.0, 2.0] and maxima == [3.0, 3.0] and agreed == [False, False], (means, maxima, agreed)
