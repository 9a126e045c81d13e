"Baselines (uniform, random, AMED, HAWQ, differentiable MP) resume exactly: a cancelled run continued with `resume=True` equals an uninterrupted one."
import threading

import pytest
import torch

from sigmaquant_lab.core import Budget
from sigmaquant_lab.data import get_data
from sigmaquant_lab.cli import float_model
from sigmaquant_lab.search import search, StepFinished, RunStarted
from sigmaquant_lab.uniform import UniformConfig, RandomConfig
from sigmaquant_lab.amed import AMEDConfig
from sigmaquant_lab.hawq import HAWQConfig
from sigmaquant_lab.diffmp import DiffMPConfig

B = Budget(max_acc_drop=0.02, size_frac=0.4)
CONFIGS = {
    # local moves (2 layers per proposal) so that acceptance matters for the chain
    "amed": AMEDConfig(budget=B, epochs=5, step_epochs=1, finetune_epochs=1, layers_per_step=2, seed=1, device="cpu"),
    "amed_full": AMEDConfig(budget=B, epochs=4, step_epochs=1, finetune_epochs=1, restore_on_reject=True, seed=2, device="cpu"),
    "random": RandomConfig(budget=B, epochs=3, cycle_epochs=1, map_seed=5, device="cpu"),
    "hawq": HAWQConfig(budget=B, epochs=3, cycle_epochs=1, hessian_samples=64, probes=2, device="cpu"),
    # learned quantizers live in the model state: resume inside the learning phases and before the fine-tune
    "diffmp": DiffMPConfig(budget=B, epochs=5, precision_epochs=1, finetune_epochs=1, device="cpu"),
    # under a BOPs budget the learned activation quantizers are in the model state too
    "diffmp_bops": DiffMPConfig(budget=Budget(max_acc_drop=0.02, size_frac=1.0, bops_frac=0.12), epochs=4, precision_epochs=1, finetune_epochs=1, device="cpu"),
    "uniform": UniformConfig(budget=Budget(max_acc_drop=0.02, size_frac=0.5), w_bits=4, a_bits=6, epochs=3, cycle_epochs=1, device="cpu"),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)   # tiny model: more threads only contend
    data = get_data("digits")
    model = float_model(data, "digits_cnn", epochs=6, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    return model, data


_FULL = {}
def uninterrupted(setup, method):
    "One uninterrupted run per config, shared by the tests."
    if method not in _FULL: _FULL[method] = search(*setup, CONFIGS[method])
    return _FULL[method]


def history(res):
    return [(h["phase"], h["step"], h["bits"], h["acc"], h["epochs"], h["decision"],
             {k: v for k, v in h["extra"].items()}) for h in res.history]


def cancel_after(n):
    "An observer that sets the returned event after the n-th StepFinished (n = 0: right after the INT8 reference)."
    ev, seen = threading.Event(), [0]
    def obs(e):
        if n == 0 and isinstance(e, RunStarted): ev.set()
        if isinstance(e, StepFinished):
            seen[0] += 1
            if seen[0] == n: ev.set()
    return ev, obs


@pytest.mark.parametrize("method,after", [("amed", 2), ("amed", 4), ("amed_full", 2), ("random", 2), ("uniform", 1),
                                          ("hawq", 1), ("diffmp", 2), ("diffmp", 4), ("diffmp_bops", 2),
                                          ("uniform", 0), ("diffmp", 0)])   # cancelled before the first step
def test_resumed_run_equals_uninterrupted(setup, tmp_path, method, after):
    model, data = setup
    cfg = CONFIGS[method]
    full = uninterrupted(setup, method)
    assert len(full.history) > after, "the scenario must have steps left after the cancel"
    ev, obs = cancel_after(after)
    a = search(model, data, cfg, out_dir=tmp_path, name="a", cancel=ev, on_event=obs)
    assert a.status == "CANCELLED" and (tmp_path/"a.partial").is_dir()
    r = search(model, data, cfg, out_dir=tmp_path, name="a", resume=True)
    assert (tmp_path/"a").is_dir() and not (tmp_path/"a.partial").exists()
    assert r.bits == full.bits and r.a_bits == full.a_bits and r.status == full.status
    assert history(r) == history(full)
    assert (r.acc, r.test_acc, r.epochs) == (full.acc, full.test_acc, full.epochs)


def test_amed_same_seed_same_chain_other_seed_other_chain(setup):
    model, data = setup
    cfg = CONFIGS["amed"]
    a, b, c = uninterrupted(setup, "amed"), search(model, data, cfg), search(model, data, cfg.__class__(**{**cfg.__dict__, "seed": 7}))
    assert [h["bits"] for h in a.history] == [h["bits"] for h in b.history]
    assert [h["bits"] for h in a.history] != [h["bits"] for h in c.history]
