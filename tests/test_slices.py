"""Time-boxed, resumable slices (issue 14), through their CPU twin: the planner says up front what fits, a run killed
mid-plan loses nothing finished, the next call finishes the plan without redoing a finished run; bad input is refused."""
import json, os, re, signal, subprocess, sys, tarfile, time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT/"benchmarks"))
from sigmaquant_lab.core import load_settings
from sigmaquant_lab.data import find_cifar10

CMD = [sys.executable, str(ROOT/"benchmarks"/"pareto_cifar10.py"), "--tiny"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "SIGMAQUANT_SETTINGS": str(ROOT/"settings.ini")}


def cifar_available(): return find_cifar10(load_settings(ROOT/"settings.ini")) is not None


pytestmark = pytest.mark.skipif(not cifar_available(), reason="the shared CIFAR-10 zip is not on this machine")


def runs_in(idx): return {r["key"] for r in idx["runs"]}


def test_tiny_plan_killed_midway_finishes_without_redoing_runs(tmp_path):
    from slices import PROTOCOLS, make_plan
    res = tmp_path/"s"
    p = subprocess.Popen([*CMD, "--budget-s", "3600", "--results", str(res)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while time.time() - t0 < 900:                       # kill it once two runs are finished (mid-plan)
        idx = res/"index.json"
        if idx.exists() and len(json.loads(idx.read_text())["runs"]) >= 2: break
        if p.poll() is not None: break
        time.sleep(0.5)
    p.send_signal(signal.SIGKILL); first = p.communicate()[0]
    assert "plan (tiny" in first and "fits" in first, first[-3000:]        # the plan and its estimate, up front
    before = json.loads((res/"index.json").read_text())
    kept = {k: (res/"runs"/k/"result.json").stat().st_mtime_ns for k in runs_in(before)}
    assert len(kept) >= 2
    # the next unfinished run as a kill before its config was written leaves it: an empty partial folder, nothing to resume
    nxt = next(it.key for it in make_plan(PROTOCOLS["tiny"]) if it.key != "fp32" and it.key not in kept)
    if not (res/"runs"/f"{nxt}.partial"/"config.json").exists(): (res/"runs"/f"{nxt}.partial").mkdir(exist_ok=True)
    r = subprocess.run([*CMD, "--budget-s", "3600", "--results", str(res)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    idx = json.loads((res/"index.json").read_text())
    want = {it.key for it in make_plan(PROTOCOLS["tiny"]) if it.key != "fp32"}
    assert runs_in(idx) == want, want - runs_in(idx)
    for k, m in kept.items():                          # finished runs were reused, not redone
        assert (res/"runs"/k/"result.json").stat().st_mtime_ns == m and f"done {k}:" not in r.stdout
    assert not list((res/"runs").glob("*.partial"))
    assert int(re.search(r"(\d+) already finished", r.stdout).group(1)) >= 3, r.stdout[:300]   # at least the two runs waited for + FP32
    # every peer got the QAT epochs of its SigmaQuant run; every record carries the protocol digest
    by = {x["key"]: x for x in idx["runs"]}
    for k, x in by.items():
        if x["method"] == "uniform" and "-W" not in k: assert x["epochs"] == by["sigmaquant" + k[len("uniform"):]]["epochs"]
        assert json.loads((res/"runs"/k/"config.json").read_text())["protocol"] == idx["digest"]
    with tarfile.open(res/"records.tar.gz") as tar:
        names = tar.getnames()
    assert all(f"runs/{k}/result.json" in names for k in want) and "index.json" in names
    # a third call has nothing left to do
    r3 = subprocess.run([*CMD, "--budget-s", "60", "--results", str(res)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r3.returncode == 0 and "done " not in r3.stdout and f"{len(want) + 1} already finished" in r3.stdout, r3.stdout[-2000:]


def test_refusals(tmp_path):
    res = tmp_path/"s"
    r = subprocess.run([*CMD, "--budget-s", "0.01", "--results", str(res)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "cannot finish even the first item" in r.stderr and "--budget-s" in r.stderr, r.stderr[-2000:]
    pf = res/"protocol.json"; d = json.loads(pf.read_text()); d["digest"] = "0000"; pf.write_text(json.dumps(d))
    r = subprocess.run([*CMD, "--budget-s", "600", "--results", str(res)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "another protocol" in r.stderr, r.stderr[-2000:]


def pretrained_available():
    from sigmaquant_lab.data import data_roots
    return any((r/"pretrained"/"resnet20-12fca82f.th").exists() for r in data_roots(load_settings(ROOT/"settings.ini")))


@pytest.mark.skipif(not pretrained_available(), reason="the shared pretrained ResNet-20 is not on this machine")
def test_cpu_subset_twin_from_the_pretrained_model(tmp_path):
    "Issue 23's protocol on its tiny twin: the pretrained model fine-tuned once, validation from the test split, every method at SigmaQuant's epochs."
    from slices import PROTOCOLS, make_plan
    res, cmd = tmp_path/"c", [sys.executable, str(ROOT/"benchmarks"/"pareto_cifar10.py"), "--protocol", "cpu-subset-tiny", "--results"]
    r = subprocess.run([*cmd, str(res), "--budget-s", "3600"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    proto = PROTOCOLS["cpu-subset-tiny"]
    idx = json.loads((res/"index.json").read_text())
    want = {it.key for it in make_plan(proto) if it.key != "fp32"}
    assert runs_in(idx) == want, want ^ runs_in(idx)
    assert {x["method"] for x in idx["runs"]} == {"sigmaquant", "uniform", "hawq", "amed", "diffmp", "random"}
    # the fine-tune: from the pretrained file (as loaded it is far above chance), one record per epoch, weights beside it, not in the records
    fp = json.loads((res/"fp32.json").read_text())
    assert fp["pretrained"]["file"].endswith("resnet20-12fca82f.th") and fp["loaded"]["test_acc"] > 0.5, fp
    assert [e["lr"] for e in fp["epochs"]] == list(proto["fp32"]["lrs"]) and fp["train_images"] == proto["ft_limit"]
    with tarfile.open(res/"records.tar.gz") as tar: assert not [n for n in tar.getnames() if n.endswith(".pt")]
    by = {x["key"]: x for x in idx["runs"]}
    for k, x in by.items():
        conf = json.loads((res/"runs"/k/"config.json").read_text())
        # the preprocessing the model was trained with and where validation came from, in every record
        assert conf["val_from"] == "test" and conf["preprocess"]["mean"] == [0.485, 0.456, 0.406] and conf["preprocess"]["source"] == "given"
        assert conf["pin_first_last"] == 8 and conf["protocol"] == idx["digest"]
        cell = k.split("-", 1)[1]
        if "-W" not in k and x["method"] != "sigmaquant": assert x["epochs"] == by[f"sigmaquant-{cell}"]["epochs"], k   # equal epochs per cell
    res_sq = json.loads((res/"runs"/"sigmaquant-sz0.3-s0"/"result.json").read_text())
    assert res_sq["costs"]["size_frac"] <= 0.3 + 1e-9
    # the table is regenerated from the records alone
    import cifar_subset_table
    assert cifar_subset_table.main(["--results", str(res), "--out", str(tmp_path/"t.md")]) == 0
    md = (tmp_path/"t.md").read_text()
    assert "| size 30.0% of INT8 (A8) | sigmaquant | 1 |" in md and "| W2A8 | 1 |" in md and f"{len(want)} of {len(want)} planned runs finished" in md
    # the estimate benchmark reads the same folder: one estimate per record, ranked against what QAT measured
    import estimate_cifar_subset
    est = tmp_path/"est"
    assert estimate_cifar_subset.main(["--protocol", "cpu-subset-tiny", "--results", str(res), "--out", str(est), "--sample", "50",
                                       "--skip-guided", "--skip-sensitivity"]) == 0
    e = json.loads(est.with_suffix(".json").read_text())
    assert len(e["maps"]) == len(want) and all(0 <= m["estimate"] <= 1 for m in e["maps"]), e["maps"]
    assert {m["key"] for m in e["maps"]} == want and e["rank"]["n_maps"] <= len(want) and -1 <= e["rank"]["spearman_test"] <= 1
    w8 = next(m for m in e["maps"] if m["key"].startswith("uniform-W8A8"))
    w2 = next(m for m in e["maps"] if m["key"].startswith("uniform-W2A8"))
    assert w8["estimate"] > w2["estimate"], (w8, w2)      # 8-bit weights estimate better than 2-bit ones
    assert "Spearman" in est.with_suffix(".md").read_text()
    # the weights are gone (a fresh checkout holds only the records): the fine-tune is rebuilt, checked against its digest, nothing rerun
    (res/"fp32.pt").unlink()
    r2 = subprocess.run([*cmd, str(res), "--budget-s", "600"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0 and "done " not in r2.stdout and (res/"fp32.pt").exists(), (r2.stdout + r2.stderr)[-2000:]
    assert json.loads((res/"fp32.json").read_text())["sha"] == fp["sha"]
    # a results folder of the other protocol is refused
    r3 = subprocess.run([*CMD, "--budget-s", "600", "--results", str(res)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r3.returncode == 2 and "another protocol" in r3.stderr, r3.stderr[-2000:]
