"""slurm/instructrl.sbatch on a real one-host Slurm (munge, slurmctld, slurmd), started by
slurm/ci/local-slurm.sh: the embedded pipeline runs as a batch job on a Ray cluster the script
brings up, and a failing job still tears its Ray daemons down. Needs root (and apt when Slurm is
not installed yet); skipped elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "slurm" / "instructrl.sbatch"
SMALL = ["task.n_sft=400", "task.n_comparisons=120", "task.n_ppo=100", "task.n_eval=20", "sft.epochs=1",
         "rm.epochs=1", "ppo.steps=2", "ppo.prompts_per_step=16", "ppo.samples_per_prompt=2", "ppo.eval_every=2",
         "ppo.critic_warmup_steps=0", "ppo.ppo_epochs=1", "ppo.minibatches=2"]  # the job's life is tested, not learning

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0 or not (shutil.which("sbatch") or shutil.which("apt-get")):
        pytest.skip("a local Slurm needs root and Debian's packages")
    setup = ROOT / "slurm" / "ci" / "local-slurm.sh"
    subprocess.run(["bash", str(setup), "start"], check=True, timeout=600)
    yield
    subprocess.run(["bash", str(setup), "stop"], check=False, timeout=120)


def submit(tmp_path: Path, *args: str, timeout_s: float = 900, while_running=None) -> tuple[dict, str]:
    """sbatch the script with `args`, wait for the job to leave the queue (calling while_running(job)
    every second meanwhile); (scontrol fields, job output)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = tmp_path / "job.out"
    job = subprocess.run(["sbatch", "--parsable", f"--chdir={tmp_path}", f"--output={out}", "--open-mode=append",
                          str(SCRIPT), *args], env=env, check=True, capture_output=True, text=True
                         ).stdout.strip().split(";")[0]
    deadline = time.monotonic() + timeout_s
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job])
            pytest.fail(f"job {job} still running after {timeout_s} s:\n{out.read_text()[-3000:]}")
        if while_running:
            while_running(job)
        time.sleep(1)
    show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout
    fields = dict(kv.split("=", 1) for kv in show.split() if "=" in kv)
    return fields, out.read_text()


def ray_processes() -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [p for p in ps if "ray-" in p and "/tmp/ray-" in p]  # the job's own --temp-dir


def test_pipeline_runs_as_a_slurm_job_and_survives_preemption(slurm, tmp_path):
    """The pipeline as a batch job; in PPO, Slurm's warning signal (USR1 to the batch shell, as
    --signal=B:USR1@120 sends it) → a save at the step's end, exit 75, the job requeues itself and the
    requeued job continues the run to the end: every step logged once, nothing trained twice."""
    run = tmp_path / "slurm"
    signalled = []

    def preempt_in_ppo(job: str) -> None:
        metrics = run / "ppo" / "metrics.jsonl"
        if not signalled and metrics.exists() and '"step": 2,' in metrics.read_text():
            subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
            signalled.append(job)
        show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        if signalled and "Reason=BeginTime" in show:  # Slurm holds a requeued job for 2 minutes; not here
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False)

    fields, log = submit(tmp_path, "pipeline", "--config", "demo", f"run.out_dir={tmp_path}", "run.name=slurm",
                         *SMALL, "ppo.steps=8", "ppo.save_every=4", while_running=preempt_in_ppo)
    assert signalled, log[-3000:]
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", log[-3000:]
    assert fields["Restarts"] == "1", fields
    assert "SIGUSR1 received" in log and "requeueing job" in log and "requeued job (restart 1)" in log, log[-3000:]
    assert log.count("all 1 node(s) joined") == 2 and "Ray cluster stopped; exit status 0" in log
    summary = json.loads((run / "summary.json").read_text())
    for model in summary["models"].values():
        assert (Path(model) / "config.json").exists() and list(Path(model).glob("*.safetensors")), model
    records = [json.loads(x) for x in (run / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in records if "reward/score" in m] == list(range(1, 9))
    resumed = [m for m in records if m.get("event") == "resume"]
    assert len(resumed) == 1 and 2 <= resumed[0]["step"] < 8, resumed
    sft_runs = [m for m in (run / "sft" / "metrics.jsonl").read_text().splitlines() if '"train/loss"' in m]
    assert len(sft_runs) == len({json.loads(m)["step"] for m in sft_runs})  # SFT was not run again
    assert (run / "config.yaml").exists()
    assert not ray_processes()


def test_failing_job_fails_and_stops_its_ray_cluster(slurm, tmp_path):
    fields, log = submit(tmp_path, "pipeline", "--config", "demo", f"run.out_dir={tmp_path}", "ppo.kl_coef=-1")
    assert fields["JobState"] == "FAILED", log[-3000:]
    assert "ppo.kl_coef" in log and "Ray cluster stopped; exit status 2" in log
    assert not ray_processes()
