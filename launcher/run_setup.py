"""What every stage shares: the run directory, model sources, the stage's worker groups for its lifetime and
where their ranks run, the log of its evaluations and of its restarts."""

from __future__ import annotations

import json
import logging
import shutil
from contextlib import contextmanager
from pathlib import Path

from launcher import provenance
from launcher.config import Config, save_config
from launcher.preflight import Inputs
from launcher.tracking import Tracker
from launcher.worker_group import LocalGroup, build_groups, shutdown_groups
from models.config import preset
from parallel.host import ModelSource
from parallel.mesh import GroupSpec
from rlhf.chat import transcript
from rlhf.data import write_jsonl
from rlhf.evaluate import Evaluation

log = logging.getLogger("instructrl")


def prepare_run(cfg: Config, inputs: Inputs, stages: tuple[str, ...]) -> None:
    """After the inputs passed their checks: clear the stages' old outputs (run.overwrite=true), save
    the config and the tokenizer, write the embedded task's data sets."""
    run = cfg.run.dir
    if cfg.run.overwrite:
        for stage in stages:
            if (run / stage).exists():
                log.warning("run.overwrite=true: replacing %s", run / stage)
                shutil.rmtree(run / stage)
        if len(stages) > 1 and (run / "summary.json").exists():  # a pipeline writes a new one
            (run / "summary.json").unlink()
        if cfg.rm.labeller is not None and "rm" in stages:  # the rounds' samples, labels and stages
            for old in [p for p in (run / "labels", *run.glob("round-*")) if p.exists()]:
                log.warning("run.overwrite=true: replacing %s", old)
                shutil.rmtree(old)
    save_config(cfg, run)
    if not cfg.run.resume or cfg.run.resume_changed_data or not (run / provenance.RECORD).exists():
        provenance.record(cfg)
    inputs.tok.save_pretrained(run / "tokenizer")
    if inputs.embedded is not None:
        for name, rows in inputs.embedded.items():
            write_jsonl(run / "data" / f"{name}.jsonl", rows)


def fresh_source(cfg: Config, tok) -> ModelSource:
    """A new model of cfg.model's shape, sized to the tokenizer."""
    shape = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
             **cfg.model.shape}
    return ModelSource(config=preset(cfg.model.preset, **shape), seed=cfg.run.seed, attention=cfg.model.attention)


def checkpoint_source(cfg: Config, path: str | Path) -> ModelSource:
    """A model loaded from an HF checkpoint directory, run with the configured attention path."""
    return ModelSource(path=str(path), seed=cfg.run.seed, attention=cfg.model.attention)


def prepare_ops(*engines) -> None:
    """Compile DeepSpeed's JIT ops on the driver, where its terminal says so, before any rank of a
    ZeRO group would compile them in silence (make install has normally built them already)."""
    if any(e.zero_stage for e in engines):
        from parallel.zero import build_ops

        build_ops(offload=any(e.offload_optimizer for e in engines))


@contextmanager
def start_groups(cfg: Config, specs: dict[str, tuple[type, GroupSpec, tuple, dict]]):
    """The stage's groups by role, for its duration: Ray actors, or one in-process rank each."""
    if cfg.run.backend == "local":
        groups = {role: LocalGroup(cls, *args, **kwargs) for role, (cls, _, args, kwargs) in specs.items()}
        try:
            yield groups
        finally:
            for g in groups.values():
                g.shutdown()
        return
    from launcher.cluster import init_ray

    init_ray(cfg.run.ray_address)
    groups = build_groups(specs, name_prefix=f"{cfg.run.name}-", log_dir=cfg.run.dir / "logs",
                          timeout_s=cfg.run.call_timeout_s, capacity_wait_s=cfg.run.capacity_wait_s)
    try:
        yield groups
    finally:
        shutdown_groups(groups)


@contextmanager
def worker_group(cfg: Config, role: str, worker_cls: type, spec: GroupSpec, *args):
    """One role's group for the duration of a stage."""
    with start_groups(cfg, {role: (worker_cls, spec, args, {})}) as groups:
        yield groups[role]


def record_placement(out_dir: Path, groups: dict) -> None:
    """Where every rank of every group runs (node, IP, device, Ray GPU ids, pid): logged and saved as
    <stage>/placement.json, so a multi-node run can be checked after the fact."""
    placement = {role: group.info for role, group in groups.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "placement.json").write_text(json.dumps(placement, indent=1))
    for role, ranks in placement.items():
        where = ", ".join(f"rank {r['rank']}@{r.get('node_ip', 'local')}/{r.get('device', 'cpu')}" for r in ranks)
        log.info("placement of %s: %s", role, where)


def log_evaluation(tracker: Tracker, ev: Evaluation, step: int, out_dir: Path) -> None:
    """An evaluation's metrics; its samples as a W&B table (the first 64) and, every one of them with
    its gold and score, as <out_dir>/samples/step-<step>.jsonl: what the policy writes, readable
    without W&B (an over-optimised policy shows itself there first)."""
    tracker.log(ev.metrics, step)
    samples = out_dir / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    with open(samples / f"step-{step}.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in ev.rows)
    columns = list(ev.rows[0]) if ev.rows else ["prompt", "response"]
    cell = lambda v: transcript(v) if isinstance(v, list) else v  # noqa: E731 (a conversation as its turns)
    tracker.table("samples", columns, [[cell(row.get(c)) for c in columns] for row in ev.rows[:64]], step)
    parts = [f"{k.removeprefix('eval/')} {v:.4g}" for k, v in ev.metrics.items()]
    log.info("evaluation at step %d: %s", step, ", ".join(parts))


def note_restart(tracker: Tracker, n: int, error: Exception) -> None:
    tracker.event("restart", max(tracker.steps, default=0), reason=str(error), restarts=n)
