"Sweeps: bad grids fail before anything runs; Ray and local backends retry a failed run once and report the rest."
import argparse, io, json, os
from dataclasses import replace
from pathlib import Path

import pytest

from sigmaquant_lab.core import SQError
from sigmaquant_lab.sweeps import SweepConfig, method_names, plan_sweep
from sigmaquant_lab.sweep_run import run_sweep, load_sweep
from sigmaquant_lab.sweep_summary import summarize, summary_table
from sigmaquant_lab.cli import add_sweep_parser, cmd_sweep

ROOT = Path(__file__).resolve().parent.parent
OTHER = "uniform" if "uniform" in method_names() else "fixed"       # a second method, whatever baselines have landed
TINY = dict(budgets=({"size_frac": 0.4, "max_acc_drop": 0.05},), seeds=(0, 1), data="digits", limit=300, fp_epochs=6,
            int8_epochs=1, e1=1, e2=1, rounds1=1, max_steps=2, epochs=1, settings=str(ROOT/"settings.ini"))
TAG = "sz0.4-da0.05"


def _parser():
    p = argparse.ArgumentParser(prog="sigmaquant-lab"); p.add_argument("--settings")
    add_sweep_parser(p.add_subparsers(dest="cmd"))
    return p


def _args(out, *extra):
    return _parser().parse_args(["--settings", str(ROOT/"settings.ini"), "sweep", "--methods", f"sigmaquant,{OTHER}",
                                 "--size-fracs", "0.4", "--max-acc-drop", "0.05", "--seeds", "0,1", "--limit", "300",
                                 "--fp-epochs", "6", "--int8-epochs", "1", "--e1", "1", "--e2", "1", "--rounds1", "1", "--max-steps", "2",
                                 "--epochs", "1", "--out", str(out), "--quiet", *extra])


@pytest.mark.parametrize("bad, needle", [
    (dict(methods=("sigmaquant", "nope")), "'nope' not known"),
    (dict(budgets=({"size_frac": 0.1},)), "infeasible"),
    (dict(budgets=({"size_frac": 1.5},)), "size_frac=1.5"),
    (dict(budgets=({"size": 0.3},)), "unknown field(s) ['size']"),
    (dict(match_epochs="nope"), "match_epochs='nope'"),
    (dict(method_overrides={"sigmaquant": {"nope": 1}}), "['nope']"),
])
def test_bad_grid_fails_before_any_run(tmp_path, bad, needle):
    out = tmp_path/"sw"
    with pytest.raises(SQError, match=None) as e: run_sweep(SweepConfig(**{**TINY, "methods": ("sigmaquant",), **bad, "out": str(out)}, backend="local"))
    assert needle in str(e.value)
    assert not out.exists(), "nothing may be written before the grid is valid"


@pytest.mark.parametrize("bad, needle", [(dict(seeds=()), "seeds is empty"), (dict(methods=()), "methods is empty"),
                                         (dict(budgets=()), "budgets is empty"), (dict(seeds=(0, 0)), "more than once"),
                                         (dict(backend="spark"), "backend='spark'")])
def test_bad_config_fails_at_construction(bad, needle):
    with pytest.raises(SQError) as e: SweepConfig(**{**TINY, **bad})
    assert needle in str(e.value)


def test_local_backend_retries_once_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("SIGMAQUANT_SWEEP_FAIL", f"once:{OTHER}-*-s0,always:{OTHER}-*-s1")
    buf = io.StringIO()
    rc = cmd_sweep(_args(tmp_path/"sw", "--backend", "local"), out=buf)
    assert rc == 1, buf.getvalue()
    res = load_sweep(tmp_path/"sw")
    by = {r["name"]: r for r in res.rows}
    assert by[f"{OTHER}-{TAG}-s0"]["attempts"] == 2 and by[f"{OTHER}-{TAG}-s0"]["status"] != "FAILED"
    assert by[f"{OTHER}-{TAG}-s1"]["status"] == "FAILED" and by[f"{OTHER}-{TAG}-s1"]["attempts"] == 2
    assert [f["name"] for f in res.failures] == [f"{OTHER}-{TAG}-s1"]
    assert f"FAILED: {OTHER}-{TAG}-s1 after 2 attempt(s)" in buf.getvalue() and "injected failure" in buf.getvalue()
    assert not (tmp_path/"sw"/f"{OTHER}-{TAG}-s1").exists() and not (tmp_path/"sw"/f"{OTHER}-{TAG}-s1.partial").exists()
    assert (tmp_path/"sw"/f"{OTHER}-{TAG}-s0"/"result.json").exists()
    # started again without the fault: the finished records are reused, only the failed run runs
    monkeypatch.delenv("SIGMAQUANT_SWEEP_FAIL")
    again = run_sweep(SweepConfig(**{**TINY, "methods": ("sigmaquant", OTHER), "out": str(tmp_path/"sw")}, backend="local"), progress=False)
    assert again.ok and [r["reused"] for r in again.rows] == [True, True, True, False]
    # other settings over the same folder: refused before anything runs
    with pytest.raises(SQError, match="exists with other settings"):
        run_sweep(SweepConfig(**{**TINY, "e2": 2, "methods": ("sigmaquant",), "out": str(tmp_path/"sw")}, backend="local"))


def test_ray_backend_crash_retry_and_failure(tmp_path, monkeypatch):
    "On Ray: a worker killed mid-run is retried (and resumes), an exception is retried, a run failing twice is reported."
    pytest.importorskip("ray")
    out = tmp_path/"sw"
    monkeypatch.setenv("SIGMAQUANT_SWEEP_FAIL", f"kill:sigmaquant-*-s0,once:{OTHER}-*-s0,always:{OTHER}-*-s1")
    buf = io.StringIO()
    rc = cmd_sweep(_args(out, "--backend", "ray", "--num-cpus", "2"), out=buf)
    assert rc == 1, buf.getvalue()
    res = load_sweep(out)
    by = {r["name"]: r for r in res.rows}
    assert res.backend == "ray" and len(res.rows) == 4
    killed = by[f"sigmaquant-{TAG}-s0"]
    assert killed["attempts"] == 2 and killed["status"] in ("OK", "BEST_EFFORT", "INFEASIBLE"), killed
    assert "died" in killed["error"] or "Crash" in killed["error"], killed["error"]
    assert by[f"{OTHER}-{TAG}-s0"]["attempts"] == 2 and "injected failure" in by[f"{OTHER}-{TAG}-s0"]["error"]
    assert by[f"sigmaquant-{TAG}-s1"]["attempts"] == 1
    assert [f["name"] for f in res.failures] == [f"{OTHER}-{TAG}-s1"] and by[f"{OTHER}-{TAG}-s1"]["status"] == "FAILED"
    assert "FAILED:" in buf.getvalue() and "| sigmaquant |" in buf.getvalue()
    for name, r in by.items():
        assert (out/name/"result.json").exists() == (r["status"] != "FAILED")
        assert not (out/(name + ".partial")).exists()
    # the matched baseline got the QAT epochs its SigmaQuant run spent
    if OTHER == "uniform":
        o = by[f"{OTHER}-{TAG}-s0"]
        assert o["matched_epochs"] == o["search_epochs"] == killed["search_epochs"]
    # the crashed-and-resumed run equals an uninterrupted one (local backend, same settings)
    monkeypatch.delenv("SIGMAQUANT_SWEEP_FAIL")
    import torch
    threads = torch.get_num_threads(); torch.set_num_threads(1)   # as the Ray task ran: float sums differ with the thread count
    try: ref = run_sweep(SweepConfig(**{**TINY, "methods": ("sigmaquant",), "seeds": (0,), "out": str(tmp_path/"ref")}, backend="local"), progress=False)
    finally: torch.set_num_threads(threads)
    assert ref.rows[0]["test_acc"] == killed["test_acc"] and ref.rows[0]["size_frac"] == killed["size_frac"]


def test_summarize_is_pure_mean_std():
    rows = [dict(method="a", budget_tag="sz0.3", quantizer="lsq", seed=s, status="OK", test_acc=v, size_frac=0.3) for s, v in enumerate((0.9, 0.8, 0.7))]
    rows.append(dict(method="a", budget_tag="sz0.3", quantizer="lsq", seed=3, status="FAILED", test_acc=None))
    before = json.dumps(rows)
    s, = summarize(rows)
    assert json.dumps(rows) == before
    assert (s["n"], s["n_failed"]) == (3, 1) and abs(s["test_acc_mean"] - 0.8) < 1e-12 and abs(s["test_acc_std"] - 0.1) < 1e-12
    assert "80.00 ± 10.00" in summary_table([s])


def test_cli_sweep_subcommand(tmp_path):
    "Once wired into `sigmaquant-lab`, `sweep` is listed and a bad method exits 2 naming it."
    from sigmaquant_lab import cli
    if "sweep" not in cli.build_parser().format_help(): pytest.skip("sweep is not wired into the CLI yet")
    import contextlib
    with contextlib.redirect_stderr(io.StringIO()) as err:
        rc = cli.main(["sweep", "--methods", "sigmaquant,bogus", "--out", str(tmp_path/"x"), "--backend", "local"])
    assert rc == 2 and "'bogus' not known" in err.getvalue() and not (tmp_path/"x").exists()


def test_failed_reference_fails_its_matched_runs(tmp_path, monkeypatch):
    "Equal epochs or nothing: when SigmaQuant fails twice, the runs matched to it are reported, not run with other epochs."
    if OTHER != "uniform": pytest.skip("needs a baseline with an `epochs` field")
    sc = SweepConfig(**{**TINY, "methods": ("sigmaquant", "uniform"), "out": str(tmp_path/"sw")}, backend="local")
    monkeypatch.setenv("SIGMAQUANT_SWEEP_FAIL", "always:sigmaquant-*-s1")
    res = run_sweep(sc, progress=False)
    by = {r["name"]: r for r in res.rows}
    assert by[f"uniform-{TAG}-s1"]["status"] == "FAILED" and "reference run sigmaquant" in by[f"uniform-{TAG}-s1"]["error"]
    assert by[f"uniform-{TAG}-s0"]["matched_epochs"] == by[f"sigmaquant-{TAG}-s0"]["search_epochs"]
    assert sorted(f["name"] for f in res.failures) == [f"sigmaquant-{TAG}-s1", f"uniform-{TAG}-s1"]
    monkeypatch.delenv("SIGMAQUANT_SWEEP_FAIL")
    again = run_sweep(sc, progress=False)                 # the missing pair runs, the rest is reused
    assert again.ok and [r["reused"] for r in again.rows] == [True, False, True, False]
    # a matched record whose reference record was removed cannot be checked: refused before anything runs
    import shutil; shutil.rmtree(tmp_path/"sw"/f"sigmaquant-{TAG}-s0")
    with pytest.raises(SQError, match="was matched to run sigmaquant"): run_sweep(sc, progress=False)
