"The `sigmaquant-lab` command: the main job end to end, and bad input that must fail clearly and write nothing."
import json, os, subprocess, sys, zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI = [str(Path(sys.executable).parent/"sigmaquant-lab")]   # the installed console script
QUICK = ["--fp-epochs", "6", "--e1", "1", "--e2", "1", "--max-steps", "6", "--int8-epochs", "1", "--quiet"]


def run(args, cwd, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SIGMAQUANT_SETTINGS": str(ROOT/"settings.ini")}
    env.update(kw.pop("env", {}))
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600, **kw)


def test_help_reads_well(tmp_path):
    r = run(["search", "--help"], tmp_path)
    assert r.returncode == 0
    for flag in ("--data", "--model", "--max-acc-drop", "--size-frac", "--bits", "--e1", "--e2", "--device", "--out"):
        assert flag in r.stdout
    assert "budgets (fractions of the INT8 reference)" in r.stdout


def test_main_job_prints_table_and_writes_record(tmp_path):
    r = run(["search", *QUICK, "--size-frac", "0.45", "--max-acc-drop", "0.05", "--out", str(tmp_path/"runs"), "--name", "t"], tmp_path)
    assert r.returncode in (0, 3), r.stderr[-3000:]
    out = r.stdout
    for col in ("layer", "params", "sigma", "cluster", "bits", "KL"): assert col in out
    assert "size " in out and "of INT8" in out and "status " in out
    run_dir = tmp_path/"runs"/"t"
    res = json.loads((run_dir/"result.json").read_text())
    bits = json.loads((run_dir/"bits.json").read_text())
    assert res["bits"] == bits and set(bits.values()) <= {2, 4, 6, 8}
    cfg = json.loads((run_dir/"config.json").read_text())
    assert cfg["method"] == "sigmaquant" and "sigma_norm" in cfg and cfg["ours"]
    assert cfg["val_from"] == "train" and cfg["preprocess"]["source"] == "data" and len(cfg["preprocess"]["mean"]) == 1
    events = [json.loads(l) for l in (run_dir/"events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "RunFinished" and any(e["event"] == "StepFinished" for e in events)
    # the status line matches the record, and size is what the bit map implies
    assert f"status        {res['status']}" in out
    ls = run(["runs", "--out", str(tmp_path/"runs")], tmp_path)
    assert ls.returncode == 0 and "t " in ls.stdout and res["status"] in ls.stdout
    # export: packed weights at their real widths, ONNX checked by onnxruntime
    ex = run(["export", "t", "--out", str(tmp_path/"runs"), "--onnx"], tmp_path)
    assert ex.returncode == 0, ex.stderr[-3000:]
    assert (run_dir/"model.packed.safetensors").stat().st_size > 0 and (run_dir/"model.onnx").exists()
    assert "argmax agreement" in ex.stdout and "file / reported" in ex.stdout
    page = (run_dir/"report.html").read_text()          # written after the search
    assert "features.0.conv" in page and res["status"] in page and '<script src="http' not in page


def _fails_clearly(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sigmaquant-lab: error:") and "fix:" in err[0], r.stderr
    for n in needles: assert n in err[0], err[0]


@pytest.mark.parametrize("args,needles", [
    (["--size-frac", "0.05"], ["infeasible", "--size-frac"]),
    (["--size-frac", "1.5"], ["--size-frac 1.5 is too large"]),
    (["--max-acc-drop", "-0.1"], ["--max-acc-drop -0.1"]),
    (["--bits", "2,4,16"], ["--bits 2,4,16 is too large"]),
    (["--bits", "two"], ["--bits"]),
    (["--model", "no_such_net"], ["no_such_net"]),
    (["--device", "cuda:0"], ["no CUDA GPU"]) if not __import__("torch").cuda.is_available() else (["--device", "tpu"], ["tpu"]),
    (["--data", "/nonexistent/imagefolder"], ["/nonexistent/imagefolder"]),
    (["--e1", "-1"], ["--e1 -1 is too small"]),
    # every flag validated, every message true (issue 12): 0 is refused where meaningless, splits too small before training
    (["--limit", "0"], ["--limit 0 is too small"]),
    (["--image-size", "0"], ["--image-size 0 is too small"]),
    (["--image-size", "16"], ["--image-size does not apply to digits"]),
    (["--val-frac", "0"], ["--val-frac 0 is too small"]),
    (["--threads", "0"], ["--threads 0 is too small"]),
    (["--fp-epochs", "0"], ["--fp-epochs 0 is too small"]),
    (["--limit", "2"], ["too small to train and judge", "train 2, val 1, test 1", "--limit", "--val-frac"]),
    (["--set", "e3=1"], ["--set e3=1 names no field of SigmaQuantConfig"]),
    (["--set", "e2=two"], ["'two' is not an integer"]),
    (["--pin-first-last", "5"], ["pin_first_last=5"]),
    # the preprocessing a model was trained with: both or neither, in torchvision's [0, 1] units; validation from train or test
    (["--mean", "0.5"], ["only mean was given", "std"]),
    (["--mean", "2", "--std", "1"], ["--mean 2 is too large"]),
    (["--std", "0,1"], ["--std 0,1 is too small"]),
    (["--val-from", "val"], ["--val-from 'val' is not a known choice"]),
])
def test_bad_input_fails_with_one_line_and_no_run_dir(tmp_path, args, needles):
    r = run(["search", *QUICK, "--out", str(tmp_path/"runs"), *args], tmp_path)
    _fails_clearly(r, *needles)
    assert not (tmp_path/"runs").exists()       # not even an empty folder: --out is made when a run starts


def test_preprocessing_and_validation_source_are_recorded(tmp_path):
    r = run(["search", *QUICK, "--limit", "600", "--mean", "0.03", "--std", "0.02", "--val-from", "test", "--val-frac", "0.5", "--no-report",
             "--out", str(tmp_path/"runs"), "--name", "p"], tmp_path)
    assert r.returncode in (0, 3), r.stderr[-3000:]
    cfg = json.loads((tmp_path/"runs"/"p"/"config.json").read_text())
    assert cfg["val_from"] == "test" and cfg["preprocess"] == dict(mean=pytest.approx([0.03]), std=pytest.approx([0.02]), units="0-1", source="given")


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path/"file"; blocker.write_text("x")
    r = run(["search", *QUICK, "--out", str(blocker/"runs")], tmp_path)
    _fails_clearly(r, "not writable")


def test_bad_settings_value(tmp_path):
    s = tmp_path/"settings.ini"; s.write_text((ROOT/"settings.ini").read_text().replace("e2 = 2", "e2 = two"))
    r = run(["--settings", str(s), "search", "--quiet", "--out", str(tmp_path/"runs")], tmp_path)
    _fails_clearly(r, "[train] e2 = 'two'")


def test_empty_and_corrupt_and_wrong_checksum_datasets(tmp_path):
    empty = tmp_path/"empty"; empty.mkdir()
    _fails_clearly(run(["search", *QUICK, "--data", str(empty), "--out", str(tmp_path/"runs")], tmp_path))
    bad = tmp_path/"bad"
    for c in ("a", "b"):
        (bad/c).mkdir(parents=True)
        for i in range(4): (bad/c/f"{i}.png").write_bytes(b"not a png")
    _fails_clearly(run(["search", *QUICK, "--data", str(bad), "--out", str(tmp_path/"runs")], tmp_path), ".png")
    z = tmp_path/"d.zip"
    with zipfile.ZipFile(z, "w") as f: f.writestr("a/0.txt", "x")
    _fails_clearly(run(["search", *QUICK, "--data", str(z), "--sha256", "0"*64, "--out", str(tmp_path/"runs")], tmp_path), "sha256")
    assert not (tmp_path/"runs").exists()


def test_baseline_method_from_the_cli(tmp_path):
    q = ["--fp-epochs", "6", "--int8-epochs", "1", "--quiet"]
    r = run(["search", *q, "--method", "uniform", "--set", "w_bits=4", "--set", "epochs=1", "--size-frac", "0.5",
             "--max-acc-drop", "0.2", "--out", str(tmp_path/"runs"), "--name", "u", "--no-report"], tmp_path)
    assert r.returncode in (0, 3), r.stderr[-2000:]
    res = json.loads((tmp_path/"runs"/"u"/"result.json").read_text())
    assert res["method"] == "uniform" and set(res["bits"].values()) == {4}
    bad = run(["search", *q, "--method", "uniform", "--set", "wbits=4", "--out", str(tmp_path/"runs2")], tmp_path)
    _fails_clearly(bad, "wbits=4", "w_bits")
    _fails_clearly(run(["search", *QUICK, "--method", "uniform", "--out", str(tmp_path/"runs2")], tmp_path), "--max-steps does not apply")
