"""Cost budgets are hard limits (issue 11): the map a search returns is within every cost budget given, a budget below
the floor of the candidate set is refused before any training, the INT8 reference is returned at once when it already
meets every budget, and the paper's abandon rule is kept behind `abandon="paper"`."""
import os, subprocess, sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sigmaquant_lab.core import Budget, SQError
from sigmaquant_lab.data import get_data
from sigmaquant_lab.quant import QuantConfig, quantizable_layers
from sigmaquant_lab.train import float_model
from sigmaquant_lab.search import search, cost_model, cost_floor
from sigmaquant_lab.sigmaquant import SigmaQuantConfig
from sigmaquant_lab.amed import AMEDConfig
from sigmaquant_lab.hawq import HAWQConfig
from sigmaquant_lab.diffmp import DiffMPConfig
from sigmaquant_lab.uniform import UniformConfig, RandomConfig, search_epochs

ROOT = Path(__file__).resolve().parent.parent
LIMITS = ("size_frac", "bops_frac", "energy_frac", "latency_frac")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(2)
    data = get_data("digits")
    model = float_model(data, "digits_cnn", epochs=10, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    # min-max steps: with LSQ, digits meets every accuracy target at once and Phase 2 has nothing to do
    cfg = SigmaQuantConfig(e1=1, e2=1, int8_epochs=1, max_steps=8, patience=3, rounds1=1, device="cpu", quant=QuantConfig(quantizer="minmax"))
    return model, data, cfg


def within(res, budget):
    return {k: (res.costs[k], getattr(budget, k)) for k in LIMITS if getattr(budget, k) is not None and res.costs[k] > getattr(budget, k) + 1e-9}


def floor(setup, cfg):
    model, data, _ = setup
    return cost_floor(cost_model(model, data, cfg), list(quantizable_layers(model)), cfg)


@pytest.mark.parametrize("kind", ["size", "bops", "energy"])
@pytest.mark.parametrize("method", ["sigmaquant", "uniform", "random", "amed", "hawq", "diffmp"])
def test_returned_map_is_within_every_cost_budget(setup, kind, method):
    model, data, cfg = setup
    common = {k: getattr(cfg, k) for k in ("e1", "e2", "int8_epochs", "device", "quant")}
    if method == "uniform": cfg = UniformConfig(**common, w_bits=None, epochs=1)
    if method == "random": cfg = RandomConfig(**common, epochs=1)
    if method == "amed": cfg = AMEDConfig(**common, epochs=2, finetune_epochs=1, max_tries=50)
    if method == "hawq": cfg = HAWQConfig(**common, epochs=1, hessian_samples=64, probes=4)
    if method == "diffmp": cfg = DiffMPConfig(**common, epochs=3, precision_epochs=1, finetune_epochs=1)
    if kind == "size": b = Budget(max_acc_drop=0.0, size_frac=0.27)
    elif kind == "bops": b = Budget(max_acc_drop=0.0, size_frac=1.0, bops_frac=0.1)
    else:
        f = floor(setup, replace(cfg, budget=Budget(max_acc_drop=0.0, size_frac=1.0)))["energy_frac"]
        b = Budget(max_acc_drop=0.0, size_frac=1.0, energy_frac=round(f * 1.15, 4))
    res = search(model, data, replace(cfg, budget=b))
    assert not within(res, b), (res.status, res.reason, within(res, b))
    assert res.status in ("OK", "BEST_EFFORT"), (res.status, res.reason)
    if res.status == "BEST_EFFORT": assert "short" in res.reason, res.reason
    if kind == "bops": assert any(a < 8 for a in res.a_bits.values()) and list(res.a_bits.values())[0] == 8, res.a_bits


def test_below_the_floor_is_refused_before_any_training(setup, tmp_path):
    model, data, cfg = setup
    f = floor(setup, cfg)
    for b, flag in ((Budget(size_frac=1.0, energy_frac=round(f["energy_frac"] * 0.8, 4)), "--energy-frac"),
                    (Budget(size_frac=1.0, latency_frac=round(f["latency_frac"] * 0.8, 4)), "--latency-frac"),
                    (Budget(size_frac=1.0, bops_frac=0.05), "--bops-frac")):     # W2 with A4 at least: 2·4/64 = 12.5 % of INT8
        c = replace(cfg, budget=b, **({"act_bits": (4, 6, 8)} if b.bops_frac else {}))
        with pytest.raises(SQError, match="below the floor") as e:
            search(model, data, c, out_dir=tmp_path/"runs")
        assert flag in str(e.value)
        assert not (tmp_path/"runs").exists() or not any((tmp_path/"runs").iterdir())
    # pinned first/last layers raise the floor, and the message says so
    fp = floor(setup, replace(cfg, pin_first_last=8))["size_frac"]
    assert fp > 0.25
    with pytest.raises(SQError, match="pinned at 8 bits"):
        search(model, data, replace(cfg, pin_first_last=8, budget=Budget(size_frac=round((0.25 + fp) / 2, 5))))
    # an activation candidate set without the reference width
    with pytest.raises(SQError, match="exclude 8"):
        replace(cfg, act_bits=(2, 4), budget=Budget(size_frac=1.0, bops_frac=0.2))


def test_below_the_floor_in_the_cli_exits_2_and_writes_nothing(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SIGMAQUANT_SETTINGS": str(ROOT/"settings.ini")}
    r = subprocess.run([str(Path(sys.executable).parent/"sigmaquant-lab"), "search", "--quiet", "--fp-epochs", "2", "--energy-frac", "0.01",
                        "--out", str(tmp_path/"runs")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "below the floor" in lines[0] and "--energy-frac" in lines[0], r.stderr
    assert "fp32" not in r.stderr and not (tmp_path/"runs").exists() or not any((tmp_path/"runs").iterdir())


def test_int8_fast_path_spends_no_search_epochs(setup):
    model, data, cfg = setup
    res = search(model, data, replace(cfg, budget=Budget(max_acc_drop=0.0, size_frac=1.0)))
    assert res.status == "OK" and "INT8 reference" in res.reason, res.reason
    assert search_epochs(res) == 0 and set(res.bits.values()) == {8} and not res.history
    # uniform at a named width is not budget-driven: it trains its map
    u = search(model, data, UniformConfig(e1=1, int8_epochs=1, device="cpu", quant=cfg.quant, w_bits=4, epochs=1, budget=Budget(size_frac=1.0)))
    assert search_epochs(u) == 1 and set(u.bits.values()) == {4}


def test_paper_switch_keeps_the_abandon_rule(setup):
    model, data, cfg = setup
    b = Budget(max_acc_drop=0.0, size_frac=0.26)
    paper = search(model, data, replace(cfg, budget=b, abandon="paper"))
    ours = search(model, data, replace(cfg, budget=b))
    assert paper.status == "INFEASIBLE" and "abandon" in paper.reason and paper.costs["size_frac"] > 0.26, (paper.status, paper.reason)
    assert ours.status in ("OK", "BEST_EFFORT") and ours.costs["size_frac"] <= 0.26 + 1e-9, (ours.status, ours.reason)
    assert any(h["decision"].startswith("fit budget") for h in ours.history)


def test_phase1_aims_at_a_tight_bops_budget(setup):
    "Phase 1 picks activation widths too, so a tight BOPs budget is met by the Phase-1 point or one fitting step."
    model, data, cfg = setup
    b = Budget(max_acc_drop=0.05, size_frac=1.0, bops_frac=0.1)
    res = search(model, data, replace(cfg, budget=b, max_steps=6))
    p1 = res.history[0]
    assert p1["phase"] == "phase1" and p1["costs"]["bops_frac"] <= 0.1 + 1e-9, p1["costs"]["bops_frac"]
    assert min(p1["a_bits"].values()) < 8 and p1["extra"]["aim_ratio"] <= 1 + 1e-9
    assert not any(h["decision"].startswith("fit budget") for h in res.history)      # no walk down to the budget
    assert res.costs["bops_frac"] <= 0.1 + 1e-9 and res.status in ("OK", "BEST_EFFORT")
