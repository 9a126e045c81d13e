"README.md is nbs/index.ipynb rendered, and CI runs exactly the README's test command."
import re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_is_rendered_from_index(tmp_path):
    jup = Path(sys.executable).parent/"jupyter"
    r = subprocess.run([str(jup), "nbconvert", "--to", "markdown", str(ROOT/"nbs"/"index.ipynb"), "--output-dir", str(tmp_path),
                        "--output", "README"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path/"README.md").read_text() == (ROOT/"README.md").read_text(), \
        "README.md is stale: run `jupyter nbconvert --to markdown nbs/index.ipynb --output-dir . --output README`"


def _commands():
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT/"README.md").read_text(), re.S)
    return [b.strip() for b in blocks[:2]]


def test_two_commands_and_ci_runs_the_test_command():
    main_job, tests = _commands()
    assert main_job.startswith("python3.11 -m venv .venv") and "sigmaquant-lab search" in main_job
    assert tests.startswith("python3.11 -m venv .venv") and "pytest" in tests
    ci = (ROOT/".ci"/"run").read_text()
    assert tests in ci.splitlines(), ".ci/run must run the README's test command verbatim"
