"SigmaQuant's bit maps respond to its budgets on digits (real QAT searches, small epochs)."
from dataclasses import replace

import numpy as np
import pytest
import torch

from sigmaquant_lab.core import Budget
from sigmaquant_lab.data import get_data
from sigmaquant_lab.train import float_model
from sigmaquant_lab.search import search
from sigmaquant_lab.sigmaquant import SigmaQuantConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(2)
    data = get_data("digits")
    model = float_model(data, "digits_cnn", epochs=10, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    cfg = SigmaQuantConfig(e1=2, e2=1, int8_epochs=1, max_steps=12, patience=4, rounds1=1, device="cpu")
    return model, data, cfg


def run(setup, cfg_kw=None, **budget):
    model, data, cfg = setup
    return search(model, data, replace(cfg, budget=Budget(**budget), **(cfg_kw or {})))


def test_tighter_size_budget_gives_fewer_bits(setup):
    loose, tight = run(setup, max_acc_drop=0.3, size_frac=0.6), run(setup, max_acc_drop=0.3, size_frac=0.26)
    assert tight.costs["size_frac"] <= 0.26 + 1e-9 and tight.status == "OK", tight.summary()
    assert tight.avg_bits < loose.avg_bits
    assert all(tight.bits[n] <= loose.bits[n] for n in loose.bits)      # lowered, never raised
    assert [h["phase"] for h in tight.history].count("phase2") >= 1    # Phase 2 did the lowering


def test_tighter_accuracy_budget_gives_more_bits(setup):
    # no QAT after Phase 1, so its aggressive σ clustering leaves accuracy short of a tight budget
    kw = dict(e1=0, e2=1)
    loose = run(setup, kw, max_acc_drop=0.3, size_frac=1.0)
    tight = run(setup, kw, max_acc_drop=0.002, size_frac=1.0)
    assert tight.avg_bits > loose.avg_bits, (loose.bits, tight.bits)
    assert all(tight.bits[n] >= loose.bits[n] for n in loose.bits)      # raised, never lowered
    raised = [h for h in tight.history if h["phase"] == "phase2"]
    assert raised and all(h["decision"].startswith("raise") for h in raised)


def test_energy_budget_steers_the_search(setup):
    free = run(setup, max_acc_drop=0.3, size_frac=1.0)
    e0 = free.costs["energy_frac"]
    target = e0 - 0.02
    res = run(setup, max_acc_drop=0.3, size_frac=1.0, energy_frac=target)
    assert res.costs["energy_frac"] < e0 and res.avg_bits < free.avg_bits, (free.bits, res.bits)
    assert res.status in ("OK", "BEST_EFFORT", "INFEASIBLE")
    if res.status == "OK": assert res.costs["energy_frac"] <= target + 1e-9


def test_infeasible_accuracy_and_size_returns_closest_point(setup):
    res = run(setup, max_acc_drop=0.0, size_frac=0.25)
    assert res.status in ("INFEASIBLE", "BEST_EFFORT", "OK")
    if res.status != "OK":
        assert res.reason and res.bits and res.history   # a closest point with its log, not an exception
