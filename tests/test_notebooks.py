"Bridge to nbdev: the exported library is in sync with nbs/, and every notebook runs (`nbdev-test`)."
import os, shutil, subprocess, sys, filecmp
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tracked(root):
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, capture_output=True, text=True)
    return [l for l in out.stdout.splitlines() if l and (root/l).exists()] if out.returncode == 0 else None


def test_export_in_sync(tmp_path):
    "nbdev-export on a copy of the tree reproduces sigmaquant_lab/ exactly (nobody edited it by hand)."
    files = _tracked(ROOT)
    if files is None:  # not a git checkout: copy the relevant folders
        files = [str(p.relative_to(ROOT)) for d in ("nbs", "sigmaquant_lab") for p in (ROOT/d).rglob("*") if p.is_file()]
        files += ["pyproject.toml", "settings.ini", "README.md"]
    for f in files:
        # the library is regenerated from scratch (only __init__.py, which holds the version, is kept), so a
        # stale or hand-written module in sigmaquant_lab/ shows up as a difference
        if "__pycache__" in f or (f.startswith("sigmaquant_lab/") and f != "sigmaquant_lab/__init__.py"): continue
        dst = tmp_path/f; dst.parent.mkdir(parents=True, exist_ok=True); shutil.copy2(ROOT/f, dst)
    r = subprocess.run([str(BIN/"nbdev-export")], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cmp = filecmp.dircmp(ROOT/"sigmaquant_lab", tmp_path/"sigmaquant_lab", ignore=["__pycache__"])
    diff = cmp.diff_files + cmp.left_only + cmp.right_only
    assert not diff, f"sigmaquant_lab/ is out of sync with nbs/ for {diff}: edit the notebooks and run nbdev-export"


def test_notebooks_run():
    "Every notebook in nbs/ executes without error (slow and gpu cells skipped)."
    # two notebooks run at once on CI's 2 cores: one torch thread each avoids 10x oversubscription slowdowns
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(BIN/"nbdev-test"), "--n-workers", "2", "--timing"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1500)
    print(r.stdout[-5000:], r.stderr[-5000:])
    assert r.returncode == 0, (r.stdout + r.stderr)[-8000:]
