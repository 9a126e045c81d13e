"""Generality matrix (issue 12): models no one tuned for. Torchvision families at 32×32 (depthwise, squeeze-excitation,
grouped, no BatchNorm), a weight shared by two layers, a layer called twice, and a Conv1d left in float — each searched
end to end on tiny data (1 QAT epoch per cycle), its map within the budget and exported at its real size."""
import os
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from sigmaquant_lab.core import Budget, SQError
from sigmaquant_lab.data import get_data, load_imagefolder_bundle, make_toy_imagefolder
from sigmaquant_lab.models import get_model
from sigmaquant_lab.quant import QuantConfig, quantizable_layers, tied_layers
from sigmaquant_lab.search import search, cost_model
from sigmaquant_lab.sigmaquant import SigmaQuantConfig
from sigmaquant_lab.export import export_packed

os.environ.setdefault("OMP_NUM_THREADS", "1")
CFG = SigmaQuantConfig(budget=Budget(max_acc_drop=0.05, size_frac=0.5), e1=1, e2=1, int8_epochs=1, rounds1=1, max_steps=2,
                       batch_size=16, calib_batches=2, device="cpu", quant=QuantConfig(quantizer="minmax"))


@pytest.fixture(scope="module")
def rgb32(tmp_path_factory):
    torch.set_num_threads(2)
    root = make_toy_imagefolder(tmp_path_factory.mktemp("toy")/"toy", n=10, size=32)
    return load_imagefolder_bundle(root, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


@pytest.fixture(scope="module")
def digits():
    return get_data("digits").subset(400)


def _within(res, budget):
    assert res.status in ("OK", "BEST_EFFORT"), (res.status, res.reason)
    assert res.costs["size_frac"] <= budget.size_frac + 1e-9, res.costs["size_frac"]


def _packed_once(model, res, tmp_path, extra_bytes=0):
    "The packed file holds each weight tensor once, at the width the search chose (plus `extra_bytes` of layers outside the search)."
    rep = export_packed(res.model, tmp_path/"m.safetensors")
    assert rep["weight_bytes"] <= res.costs["size_bytes"] * 1.001 + 16 * len(res.bits) + extra_bytes, (rep["weight_bytes"], res.costs["size_bytes"])
    return rep


@pytest.mark.parametrize("name,feature", [("mobilenet_v2", "depthwise"), ("mobilenet_v3_small", "squeeze-excitation"),
                                          ("regnet_x_400mf", "grouped"), ("squeezenet1_1", "no BatchNorm"),
                                          ("efficientnet_b0", "squeeze-excitation"), ("resnet18", "residual"),
                                          ("googlenet", "training-only heads"), ("mnasnet0_5", "versioned state")])
def test_torchvision_family_at_32px(rgb32, tmp_path, name, feature):
    model = get_model(name, rgb32.num_classes, rgb32.in_shape)
    if feature == "depthwise": assert any(isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 for m in model.modules())
    if feature == "grouped": assert any(isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels for m in model.modules())
    if feature == "squeeze-excitation": assert any("SqueezeExcitation" in type(m).__name__ for m in model.modules())
    if feature == "no BatchNorm": assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    res = search(model, rgb32, CFG)
    _within(res, CFG.budget)
    assert set(res.bits) == set(quantizable_layers(model)) and min(res.bits.values()) < 8
    extra = 0
    if feature == "training-only heads":      # never called at inference: left at 8 bits, outside the search and the budgets
        assert all(res.bits[n] == 8 for n in res.bits if n.startswith("aux")) and not any(l["name"].startswith("aux") for l in res.layers)
        extra = sum(m.weight.numel() for n, m in quantizable_layers(model).items() if n.startswith("aux"))   # stored at 8 bits
    _packed_once(model, res, tmp_path, extra)


class TiedCNN(nn.Module):
    "Two 3×3 convolutions sharing one weight tensor (`b.weight = a.weight`)."
    def __init__(self, nc=10):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.a, self.b = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.b.weight = self.a.weight
        self.fc = nn.Linear(16, nc)
    def forward(self, x):
        x = torch.relu(self.stem(x)); x = torch.relu(self.a(x)); x = torch.relu(self.b(x))
        return self.fc(x.mean((2, 3)))


def test_shared_weight_is_one_unit(digits, tmp_path):
    model = TiedCNN()
    assert tied_layers(model) == {"b": "a"}
    unique = sum(m.weight.numel() for n, m in quantizable_layers(model).items() if n != "b")
    for cfg in (CFG, replace(CFG, budget=Budget(max_acc_drop=0.05, size_frac=1.0, bops_frac=0.3))):
        res = search(model, digits, cfg)
        assert res.reference["size_bytes"] == unique                       # INT8 size counts the shared tensor once
        assert res.bits["a"] == res.bits["b"]                              # one width per shared tensor
        assert res.model.a.weight is res.model.b.weight and res.model.a.weight_quant is res.model.b.weight_quant
        for h in res.history: assert h["bits"].get("b", h["bits"]["a"]) == h["bits"]["a"]
        _within(res, cfg.budget)
    # BOPs count every use: the shared weight's MACs twice
    hw = cost_model(model, digits, CFG)
    assert hw.costs(8).bops_int8 == 64 * sum(s.macs for s in hw.shapes) and hw.costs(8).size_bytes_int8 == unique
    rep = _packed_once(model, res, tmp_path)
    assert rep["weight_bytes"] < unique + 16 * 9 * 16                      # b's 2304 weights are not stored again


class Twice(nn.Module):
    "One convolution applied twice in the forward pass."
    def __init__(self, nc=10):
        super().__init__()
        self.stem, self.body, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, nc)
    def forward(self, x):
        x = torch.relu(self.stem(x)); x = torch.relu(self.body(x)); x = torch.relu(self.body(x))
        return self.fc(x.mean((2, 3)))


def test_layer_called_twice(digits, tmp_path):
    hw = cost_model(Twice(), digits, CFG)
    assert [s.calls for s in hw.shapes] == [1, 2, 1]
    b = Budget(max_acc_drop=0.05, size_frac=1.0, bops_frac=0.3)
    res = search(Twice(), digits, replace(CFG, budget=b))
    _within(res, b); assert res.costs["bops_frac"] <= 0.3 + 1e-9
    _packed_once(Twice(), res, tmp_path)


class WithConv1d(nn.Module):
    "A Conv1d over the image rows, then a Conv2d and a Linear."
    def __init__(self, nc=10):
        super().__init__()
        self.c1 = nn.Conv1d(8, 8, 3, padding=1)
        self.c2, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8 * 64, nc)
    def forward(self, x):
        x = x + self.c1(x.flatten(1, 2)).view_as(x)
        return self.fc(torch.relu(self.c2(x)).flatten(1))


def test_conv1d_left_in_float(digits, tmp_path):
    with pytest.raises(SQError, match="strict=False") as e:
        search(WithConv1d(), digits, CFG, out_dir=tmp_path/"runs")
    assert "c1 (Conv1d)" in str(e.value) and not (tmp_path/"runs").exists()
    res = search(WithConv1d(), digits, replace(CFG, strict=False))
    _within(res, CFG.budget)
    assert set(res.bits) == {"c2", "fc"} and isinstance(res.model.c1, nn.Conv1d)
    assert res.costs["float_layers"] == ["c1"] and res.costs["float_bytes"] == 4 * (8 * 8 * 3 + 8)
    assert res.costs["float_macs"] == 8 * 8 * 8 * 3                  # costed as float: 64 outputs × 8 in-channels × kernel 3
    assert "c1 kept in float" in res.summary() and "FP32 MACs" in res.summary()


def test_search_takes_the_data_forms_explore_takes():
    "search() takes (x, y) tensors, a Dataset or a DataLoader as explore does: the splits are carved the same way."
    from torch.utils.data import TensorDataset, DataLoader
    from sklearn.datasets import load_digits
    d = load_digits(); x = torch.tensor(d.images[:600], dtype=torch.float32).unsqueeze(1) / 16; y = torch.tensor(d.target[:600])
    cfg = replace(CFG, budget=Budget(max_acc_drop=0.05, size_frac=0.5))
    got, model = [], TiedCNN()
    for form in ((x, y), TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=50)):
        res = search(model, form, cfg)
        _within(res, cfg.budget)
        got.append((res.reference["acc_val"], res.bits))
    assert got[0] == got[1] == got[2]            # one carving, whatever the form


def test_diffmp_moves_a_shared_weight_as_one_unit_and_resumes(digits, tmp_path):
    "DiffMP's learned quantizer serves every layer of a shared tensor, so every step's map has one width per tensor and a killed run resumes."
    import threading
    from sigmaquant_lab.diffmp import DiffMPConfig
    from sigmaquant_lab.search import StepFinished
    cfg = DiffMPConfig(budget=Budget(max_acc_drop=0.05, size_frac=1.0, bops_frac=0.3), epochs=3, precision_epochs=1, finetune_epochs=1,
                       batch_size=16, calib_batches=2, device="cpu", quant=QuantConfig(quantizer="minmax"))
    model = TiedCNN()
    full = search(model, digits, cfg)
    assert all(h["bits"].get("b", h["bits"]["a"]) == h["bits"]["a"] for h in full.history) and full.bits["a"] == full.bits["b"]
    ev, seen = threading.Event(), [0]
    def obs(e):
        if isinstance(e, StepFinished):
            seen[0] += 1
            if seen[0] == 1: ev.set()
    a = search(model, digits, cfg, out_dir=tmp_path, name="r", cancel=ev, on_event=obs)
    assert a.status == "CANCELLED"
    r = search(model, digits, cfg, out_dir=tmp_path, name="r", resume=True)
    assert (r.bits, r.acc, r.status) == (full.bits, full.acc, full.status)


class WithHead(nn.Module):
    "A CNN whose training-only head is registered last (never called at inference)."
    def __init__(self, nc=10):
        super().__init__()
        self.stem, self.fc = nn.Conv2d(1, 16, 3, padding=1), nn.Linear(16, nc)
        self.head = nn.Linear(16 * 64, nc)
    def forward(self, x): return self.fc(torch.relu(self.stem(x)).mean((2, 3)))


def test_floor_pins_the_layers_the_search_pins(digits):
    "The floor check and the search agree on the first and last layer when an unused layer is registered last."
    from sigmaquant_lab.search import check_budgets
    f = check_budgets(WithHead(), digits, replace(CFG, pin_first_last=8, budget=Budget(size_frac=1.0)))
    assert set(f["w_bits"]) == {"stem", "fc"} and f["w_bits"]["fc"] == 8 and f["size_frac"] > 0.9
    with pytest.raises(SQError, match="below the floor"):
        search(WithHead(), digits, replace(CFG, pin_first_last=8, budget=Budget(size_frac=0.5)))


def test_explorer_workbench_lists_the_searched_units(digits):
    "The explorer's σ/KL previews cover the layers a search moves: no tied copy, no layer inference never calls."
    from sigmaquant_lab.explorer import Workbench
    assert Workbench(digits, WithHead(), "with_head").names == ("stem", "fc")
    wb = Workbench(digits, TiedCNN(), "tied")
    assert wb.names == ("stem", "a", "fc") and wb.kl((2, 4, 8)).shape == (3, 3) and len(wb.sigma) == 3
