"Killed runs resume from their last completed step and end exactly where an uninterrupted run ends."
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent/"sigmaquant-lab")
# AMED's Metropolis-Hastings chain has a fixed length (epochs // step_epochs steps, then a fine-tune), whatever the accuracy of the
# FP32 model it starts from: several completed steps to kill between, and a seeded random proposal that resume must replay exactly.
# (A SigmaQuant search ends when its targets are met, after as few as two steps on digits: see test_sigmaquant_sigkill_resumes.)
COMMON = ["search", "--quiet", "--threads", "1", "--fp-epochs", "6", "--bits", "2,4,6,8", "--quantizer", "minmax", "--seed", "3"]
ARGS = [*COMMON, "--method", "amed", "--size-frac", "0.4", "--max-acc-drop", "0.3"]
SQ_ARGS = [*COMMON, "--e1", "1", "--e2", "1", "--size-frac", "0.4", "--max-acc-drop", "0.0"]


def cli(args, cwd, fault=None, wait=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SIGMAQUANT_SETTINGS": str(ROOT/"settings.ini")}
    env.pop("SIGMAQUANT_FAULT", None)
    if fault: env["SIGMAQUANT_FAULT"] = fault
    p = subprocess.Popen([CLI, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait: return p
    out, err = p.communicate(timeout=600)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def result(d): return json.loads((d/"result.json").read_text())


def steps(res): return [(h["phase"], h["step"], h["bits"], round(h["acc"], 6)) for h in res["history"]]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    "One uninterrupted run to compare against (also warms the FP32 cache)."
    d = tmp_path_factory.mktemp("full")
    r = cli([*ARGS, "--out", str(d/"runs"), "--name", "full"], d)
    assert r.returncode == 0, r.stderr[-3000:]
    res = result(d/"runs"/"full")
    assert len(res["history"]) >= 4, "the scenario must have several steps"
    return d, res


def same_as_full(res, full_res):
    assert res["bits"] == full_res["bits"]
    assert steps(res) == steps(full_res)
    assert res["acc"] == full_res["acc"] and res["test_acc"] == full_res["test_acc"]
    assert res["epochs"] == full_res["epochs"] and res["status"] == full_res["status"]


@pytest.mark.parametrize("fault", ["save_torch:checkpoint.pt:3",        # killed while writing the 3rd checkpoint
                                   "save_torch:states/step-2.pt",        # killed while writing a step's state
                                   "atomic_write:reference.json",        # killed while writing the INT8 reference
                                   "atomic_write:result.json"])          # killed while writing the final result
def test_killed_during_a_write_resumes_to_the_same_result(full, tmp_path, fault):
    d, full_res = full
    out = tmp_path/"runs"
    k = cli([*ARGS, "--out", str(out), "--name", "r"], full[0], fault=fault)
    assert k.returncode == -signal.SIGKILL, (k.returncode, k.stderr[-2000:])
    assert (out/"r.partial").is_dir() and not (out/"r").exists()
    r = cli([*ARGS, "--out", str(out), "--resume", "r"], full[0])
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (out/"r.partial").exists() and not (out/"r"/"states").exists()
    same_as_full(result(out/"r"), full_res)
    ev = [json.loads(l) for l in (out/"r"/"events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in ev if e["event"] == "StepFinished"] == [h["step"] for h in full_res["history"]]  # no duplicates


def kill_after_steps(args, out, name, n_steps, cwd):
    "Start a run, SIGKILL it once `n_steps` steps are recorded (mid-QAT of the next one), resume it; the resumed result."
    p = cli([*args, "--out", str(out), "--name", name], cwd, wait=False)
    evf, t0 = out/f"{name}.partial"/"events.jsonl", time.time()
    while time.time() - t0 < 300:
        n = sum('"StepFinished"' in l for l in evf.read_text().splitlines()) if evf.exists() else 0
        if n >= n_steps: break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL); p.communicate()
    assert (out/f"{name}.partial").is_dir() and not (out/name).exists()
    r = cli([*args, "--out", str(out), "--resume", name], cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return result(out/name)


def test_sigkill_during_qat_resumes_to_the_same_result(full, tmp_path):
    d, full_res = full
    same_as_full(kill_after_steps(ARGS, tmp_path/"runs", "q", 2, d), full_res)


def test_sigmaquant_sigkill_resumes(tmp_path):
    "SigmaQuant killed after its Phase-1 step, during its first Phase-2 QAT, resumes to the uninterrupted run's result."
    r = cli([*SQ_ARGS, "--out", str(tmp_path/"runs"), "--name", "full"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    full_res = result(tmp_path/"runs"/"full")
    assert len(full_res["history"]) >= 2 and full_res["history"][1]["phase"] == "phase2", full_res["history"]
    same_as_full(kill_after_steps(SQ_ARGS, tmp_path/"runs", "q", 1, tmp_path), full_res)


def test_resume_refusals(full, tmp_path):
    d, _ = full
    r = cli([*ARGS, "--out", str(d/"runs"), "--resume", "full"], d)
    assert r.returncode == 2 and "already finished" in r.stderr
    r = cli([*ARGS, "--out", str(d/"runs"), "--resume", "ghost"], d)
    assert r.returncode == 2 and "no interrupted run named ghost" in r.stderr
    # a corrupt run folder
    bad = tmp_path/"runs"/"bad.partial"; bad.mkdir(parents=True); (bad/"config.json").write_text("{not json")
    r = cli([*ARGS, "--out", str(tmp_path/"runs"), "--resume", "bad"], d)
    assert r.returncode == 2 and "corrupt" in r.stderr


def test_concurrent_runs_cannot_share_a_folder(full, tmp_path):
    "A live writer holds the run folder: a second run with that name and a resume of it are both refused."
    from sigmaquant_lab.runs import RunDir
    d, _ = full
    out = tmp_path/"runs"
    live = RunDir.create(out, "c")           # this process is the live writer (holds the lock)
    r = cli([*ARGS, "--out", str(out), "--name", "c"], d)
    assert r.returncode == 2 and "already in progress" in r.stderr, r.stderr[-2000:]
    r = cli([*ARGS, "--out", str(out), "--resume", "c"], d)
    assert r.returncode == 2 and "being written by another process" in r.stderr, r.stderr[-2000:]
    live.abort()
    assert not out.joinpath("c.partial").exists()
