"""The bad-input matrix: every kind of bad input gives one clear line naming the problem and the fix, and leaves
nothing half-written. Kinds covered (file::test):

 1 unsupported layer (Conv1d/Embedding...)      nbs/01_quant, test_unsupported_and_no_quantizable_layers
 2 no quantizable layers                         nbs/01_quant, test_unsupported_and_no_quantizable_layers
 3 bit width outside 1..8 / the candidate set    test_cli::test_bad_input...[--bits 2,4,16], nbs/01_quant (set_bits_)
 4 infeasible budget (size below min bits)       test_cli [--size-frac 0.05]
 5 negative or >1 fractions                      test_cli [--size-frac 1.5], [--max-acc-drop -0.1]
 6 empty dataset folder                          test_cli::test_empty_and_corrupt_and_wrong_checksum_datasets
 7 corrupt image                                 test_cli (same test)
 8 wrong checksum                                test_cli (same test)
 9 wrong image size for the model                test_wrong_image_size_for_the_model
10 NaN/inf loss                                  test_nan_loss_removes_the_run, nbs/06_train, nbs/08_search
11 out of disk space (simulated)                 test_disk_full_during_a_search, nbs/07_runs
12 non-writable output folder                    test_cli::test_unwritable_output_dir
13 corrupt run directory                         test_resume::test_resume_refusals
14 resume of a finished run                      test_resume::test_resume_refusals
15 concurrent runs writing the same folder       test_resume::test_concurrent_runs_cannot_share_a_folder
16 unknown model name                            test_cli [--model no_such_net]
17 CUDA asked for on a CPU machine               test_cli [--device cuda:0]
18 bad settings.ini value                        test_cli::test_bad_settings_value
19 interrupted export                            tests/test_export.py, nbs/11_export
20 missing dataset path                          test_cli [--data /nonexistent/imagefolder]
21 malformed --bits                              test_cli [--bits two]
22 negative epochs, pin outside the set          test_cli [--e1 -1], [--pin-first-last 5]
23 weights file that does not fit the model      test_weights_that_do_not_fit (also a list, a bare tensor, no file)
24 a --data .zip that is not a zip               test_not_a_zip
25 unknown search method / KL / σ normalisation  test_unknown_method_and_normalisations
26 one-class dataset; labels beyond the outputs  test_one_class_dataset, nbs/04_data (check_splits), nbs/04b_dataforms
27 CIFAR-10 missing; --download offline          test_cifar10_missing_and_download_offline
28 --weights: a pickled list, a bare tensor      test_weights_that_do_not_fit, nbs/05_models (load_weights_)
29 uniform w_bits outside the candidates         test_record::test_bad_input_leaves_no_out_folder
30 refusals after parsing leave no --out folder  test_record::test_bad_input_leaves_no_out_folder, test_cli (not even an empty one)
31 NaN/inf inputs                                test_record::test_nan_inputs_and_classes_missing_from_the_splits (check_splits)
32 classes that never reach val/test (warning)   test_record (same test); the CLI prints one "warning:" line
33 unknown run name for `runs NAME`              test_record::test_runs_are_named_by_their_folder
34 a floor hint pasted back                      test_record::test_floor_hints_are_accepted_when_pasted_back (size+pins, BOPs, energy)
35 an export that does not reproduce the search  test_record::test_searched_activation_widths_survive_every_export
"""
import errno, os, subprocess, sys
from dataclasses import replace
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn as nn

from sigmaquant_lab.core import SQError, Budget
from sigmaquant_lab.quant import quantize_
from sigmaquant_lab.data import get_data
from sigmaquant_lab.search import search, FixedBitsConfig, SearchConfig, config_class_for
from sigmaquant_lab.sigmaquant import SigmaQuantConfig

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent/"sigmaquant-lab")
QUICK = ["--quiet", "--fp-epochs", "2", "--e1", "1", "--e2", "1", "--max-steps", "2"]


def cli(args, cwd):
    env = {**os.environ, "SIGMAQUANT_SETTINGS": str(ROOT/"settings.ini"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def one_clear_line(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [l for l in r.stderr.splitlines() if l.startswith("sigmaquant-lab: error:")]
    assert len(lines) == 1 and "fix:" in lines[0], r.stderr
    for n in needles: assert n in lines[0], lines[0]


def nothing_written(out): assert not out.exists() or not [p for p in out.iterdir()], list(out.iterdir())


def test_unsupported_and_no_quantizable_layers():
    with pytest.raises(SQError, match="emb \\(Embedding\\)"): quantize_(nn.Sequential(nn.Linear(2, 2), nn.Embedding(4, 2)).__class__(**{}) if False else _with_embedding())
    with pytest.raises(SQError, match="no Conv2d or Linear"): quantize_(nn.Sequential(nn.ReLU()))


def _with_embedding():
    m = nn.Module(); m.fc = nn.Linear(2, 2); m.emb = nn.Embedding(4, 2); return m


def test_wrong_image_size_for_the_model(tmp_path):
    r = cli(["search", *QUICK, "--model", "vgg11", "--out", str(tmp_path/"runs")], tmp_path)
    one_clear_line(r, "vgg11", "(1, 8, 8)")
    nothing_written(tmp_path/"runs")


def test_nan_loss_removes_the_run(tmp_path):
    r = cli(["search", *QUICK, "--lr", "1e30", "--out", str(tmp_path/"runs")], tmp_path)
    one_clear_line(r, "became nan", "--lr")   # the loss, or a learned step on the way there
    nothing_written(tmp_path/"runs")


def test_disk_full_during_a_search(tmp_path):
    data = get_data("digits").subset(200)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4*6*6, 10))
    cfg = FixedBitsConfig(w_bits=4, e1=1, int8_epochs=0, calib_batches=1, budget=Budget(1.0, 1.0), device="cpu")
    real, calls = os.replace, {"n": 0}
    def flaky(a, b):
        calls["n"] += 1
        if calls["n"] > 4: raise OSError(errno.ENOSPC, "No space left on device")
        return real(a, b)
    with mock.patch("os.replace", flaky):
        with pytest.raises(SQError, match="No space left on device.*free disk space"):
            search(net, data, cfg, out_dir=tmp_path/"runs", name="full")
    nothing_written(tmp_path/"runs")


def test_weights_that_do_not_fit(tmp_path):
    torch.save(nn.Linear(3, 3).state_dict(), tmp_path/"w.pt")
    one_clear_line(cli(["search", *QUICK, "--weights", str(tmp_path/"w.pt"), "--out", str(tmp_path/"runs")], tmp_path), "do not fit")
    (tmp_path/"junk.pt").write_text("not a checkpoint")
    one_clear_line(cli(["search", *QUICK, "--weights", str(tmp_path/"junk.pt"), "--out", str(tmp_path/"runs")], tmp_path), "is not a torch checkpoint")
    # issue 20 item 5: a pickled list or a bare tensor is one line too, not a TypeError
    torch.save([1, 2, 3], tmp_path/"list.pt"); torch.save(torch.zeros(4), tmp_path/"tensor.pt")
    one_clear_line(cli(["search", *QUICK, "--weights", str(tmp_path/"list.pt"), "--out", str(tmp_path/"runs")], tmp_path), "hold a list, not a state_dict")
    one_clear_line(cli(["search", *QUICK, "--weights", str(tmp_path/"tensor.pt"), "--out", str(tmp_path/"runs")], tmp_path), "bare tensor of shape (4,)")
    one_clear_line(cli(["search", *QUICK, "--weights", str(tmp_path/"none.pt"), "--out", str(tmp_path/"runs")], tmp_path), "does not exist")
    nothing_written(tmp_path/"runs")


def test_weights_as_saved_elsewhere(tmp_path):
    "A checkpoint saved the way pretrained CIFAR models are shared (wrapped, module.-prefixed, head renamed, no BN counters) loads as it is."
    from sigmaquant_lab.models import DigitsCNN
    from sigmaquant_lab.options import InputConfig
    from sigmaquant_lab.inputs import input_data, input_model
    from sigmaquant_lab.core import load_settings
    ref = DigitsCNN(); torch.nn.init.normal_(ref.fc.weight)
    sd = {"module." + k.replace("fc.", "classifier."): v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"best_prec1": 0.9, "state_dict": sd}, tmp_path/"ckpt.th")
    st = load_settings(ROOT/"settings.ini")
    data, name = input_data(InputConfig(limit=300), st)
    m = input_model(InputConfig(weights=str(tmp_path/"ckpt.th")), data, name, st)
    assert torch.equal(m.fc.weight, ref.fc.weight) and torch.equal(m.features[5].bn.running_var, ref.features[5].bn.running_var)
    bad = dict(sd); bad["module.classifier.weight"] = torch.zeros(10, 63)
    torch.save({"state_dict": bad}, tmp_path/"bad.th")
    with pytest.raises(SQError, match="classifier.weight \\(10, 63\\) cannot be the model's fc.weight \\(10, 64\\)"):
        input_model(InputConfig(weights=str(tmp_path/"bad.th")), data, name, st)


def test_not_a_zip(tmp_path):
    z = tmp_path/"data.zip"; z.write_text("definitely not a zip")
    one_clear_line(cli(["search", *QUICK, "--data", str(z), "--out", str(tmp_path/"runs")], tmp_path), "data.zip")
    nothing_written(tmp_path/"runs")


def test_one_class_dataset(tmp_path):
    # accuracy is 100 % by construction with one class: refused before the float model is trained, nothing written
    from sigmaquant_lab.data import make_toy_imagefolder
    root = make_toy_imagefolder(tmp_path/"one", n=12, size=12, classes=("cat",))
    r = cli(["search", *QUICK, "--data", str(root), "--model", "digits_cnn", "--out", str(tmp_path/"runs")], tmp_path)
    one_clear_line(r, "1 class in its training split (cat)", "at least two classes")
    nothing_written(tmp_path/"runs")
    # a model with fewer outputs than the data has classes: refused by search() before anything is written
    digits = get_data("digits").subset(300)
    small = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    with pytest.raises(SQError, match="returns 4 logits but the data.s labels reach 9"):
        search(small, digits, FixedBitsConfig(e1=0, int8_epochs=0), out_dir=tmp_path/"runs2")
    nothing_written(tmp_path/"runs2")


def test_cifar10_missing_and_download_offline(tmp_path):
    # no data root holds CIFAR-10: the message names the root and every way to get it; --download offline names the
    # manual step (a dead proxy makes sure nothing is ever fetched, online or not)
    st = tmp_path/"settings.ini"; st.write_text(f"[data]\nroot = {tmp_path/'data'}\nextra_roots =\n")
    env = {**os.environ, "SIGMAQUANT_SETTINGS": str(st), "OMP_NUM_THREADS": "1",
           **{k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}}
    run = lambda *args: subprocess.run([CLI, "search", "--quiet", "--data", "cifar10", *args, "--out", str(tmp_path/"runs")],
                                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    one_clear_line(run(), f"CIFAR-10 not found in {tmp_path/'data'}", "--download")
    one_clear_line(run("--download"), "downloading CIFAR-10 into", "by hand")
    nothing_written(tmp_path/"runs")
    assert not [p for p in (tmp_path/"data").rglob("*") if p.is_file()], list((tmp_path/"data").rglob("*"))
    one_clear_line(cli(["search", "--data", "digits", "--download", "--out", str(tmp_path/"runs")], tmp_path), "--download fetches CIFAR-10 only")


def test_unknown_method_and_normalisations():
    with pytest.raises(SQError, match="search method 'magic'"): config_class_for("magic")
    with pytest.raises(SQError, match="kl_norm 'cos'"): SigmaQuantConfig(kl_norm="cos")
    with pytest.raises(SQError, match="sigma_norm 'l2'"): SigmaQuantConfig(sigma_norm="l2")
    with pytest.raises(SQError, match="mac='fp16'"): SigmaQuantConfig(mac="fp16")
