"""`explore(model, data)` in a real JupyterLab, offline: a temporary notebook builds a small custom model, calls
`explore(...)` and shows the app inline; headless Chromium (Playwright, system `/usr/bin/chromium`) runs it with every
non-localhost request blocked, moves a budget slider and checks that the views follow it, that no cell failed and
that the page logged no console errors. Set SIGMAQUANT_UPDATE_SCREENSHOT=1 to also write nbs/images/explore_jupyterlab.png."""
import importlib.util, json, os, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CELLS = [
    "import torch, torch.nn as nn, numpy as np\n"
    "from sklearn.datasets import load_digits\n"
    "from sigmaquant_lab.explorer_app import explore\n"
    "d = load_digits(); x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16; y = torch.tensor(d.target)\n"
    "class MyNet(nn.Module):\n"
    "    def __init__(self):\n"
    "        super().__init__(); self.conv, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8 * 16, 10)\n"
    "    def forward(self, x): return self.fc(nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))\n"
    "torch.manual_seed(0); net = MyNet(); opt = torch.optim.Adam(net.parameters(), 1e-2)\n"
    "for _ in range(30): opt.zero_grad(); nn.functional.cross_entropy(net(x), y).backward(); opt.step()",
    "app = explore(net, (x, y), auto_refine=False, size_frac=0.5, ladder=[])\napp",
]

# the title of the view whose figure carries css class `sq-view-<name>`, in any Bokeh document of the page
TITLE = """(name) => { for (const doc of (window.Bokeh ? Bokeh.documents : [])) for (const m of doc.all_models) {
  if ((m.css_classes || []).includes('sq-view-' + name) && m.title) return m.title.text; } return null; }"""


def _helpers():
    spec = importlib.util.spec_from_file_location("bench_explorer", ROOT/"benchmarks"/"bench_explorer.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(420)
def test_explore_inline_in_jupyterlab(tmp_path):
    pytest.importorskip("jupyterlab")
    try: from playwright.sync_api import sync_playwright
    except ImportError: pytest.skip("playwright is not installed (tests/test_browser.py installs it)")
    h = _helpers()
    try: exe = h.ensure_chromium(install=False)
    except RuntimeError as e: pytest.skip(str(e))
    nb = dict(nbformat=4, nbformat_minor=5, metadata=dict(kernelspec=dict(name="python3", display_name="Python 3", language="python")),
              cells=[dict(cell_type="code", id=f"c{i}", metadata={}, execution_count=None, outputs=[], source=s) for i, s in enumerate(CELLS)])
    (tmp_path/"explore.ipynb").write_text(json.dumps(nb))
    port = h.free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "JUPYTER_RUNTIME_DIR": str(tmp_path/"rt"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path/"ws"), "JUPYTER_CONFIG_DIR": str(tmp_path/"cfg")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={tmp_path}", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--ServerApp.port_retries=0", "--allow-root"]
    log = open(tmp_path/"lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 60
        while True:
            try: urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=1); break
            except OSError:
                if proc.poll() is not None or time.monotonic() > end:
                    pytest.fail(f"jupyter lab did not start:\n{(tmp_path/'lab.log').read_text()[-3000:]}")
                time.sleep(0.3)
        with sync_playwright() as pw:
            browser = h.launch(pw, exe)
            page = browser.new_page(viewport=dict(width=1500, height=1200))
            errors, blocked = [], []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            def local_only(route):
                u = route.request.url
                if u.startswith(("data:", "blob:")) or u.startswith((f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}")): route.continue_()
                else: blocked.append(u); route.abort()
            page.route("**/*", local_only)
            t0 = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/lab/tree/explore.ipynb", timeout=120_000)
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
            select = page.locator(".jp-Dialog").get_by_role("button", name="Select", exact=True)
            try: select.wait_for(timeout=20_000); select.click()                           # the kernel picker of a new notebook
            except Exception: pass
            page.get_by_text("Kernel status: Idle").first.wait_for(state="attached", timeout=120_000)   # the kernel is up
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_text("Run All Cells", exact=True).click()
            try: page.locator(".sq-view-zone canvas").first.wait_for(timeout=int(os.environ.get("SQ_LAB_WAIT_S", "240")) * 1000)
            except Exception:
                page.screenshot(path=str(tmp_path/"lab.png")); print("OUTPUTS", page.locator(".jp-OutputArea-output").all_inner_texts()[:5])
                print("ERRORS", errors[:10], "BLOCKED", blocked[:10], "SHOT", tmp_path/"lab.png"); raise
            paint_s = time.perf_counter() - t0
            end = time.monotonic() + 30
            while "size ≤ 50%" not in (page.evaluate(TITLE, "zone") or ""):
                assert time.monotonic() < end, page.evaluate(TITLE, "zone"); page.wait_for_timeout(100)
            sidebar = page.locator(".sq-given p").first.inner_text()
            assert "MyNet" in sidebar and "(x, y)" in sidebar, sidebar
            assert page.locator(".sq-dataset").count() == 0 and page.locator(".sq-model").count() == 0   # no pickers
            handle = page.locator(".sq-size .noUi-handle").first
            handle.focus(); page.keyboard.press("ArrowRight")
            end = time.monotonic() + 30
            while "size ≤ 51%" not in (page.evaluate(TITLE, "zone") or ""):                # the kernel got it and the views followed
                assert time.monotonic() < end, page.evaluate(TITLE, "zone"); page.wait_for_timeout(100)
            assert "51%" in page.evaluate(TITLE, "bits") and "size ≤ 51%" in page.evaluate(TITLE, "costs")
            outputs = " ".join(page.locator(".jp-OutputArea-output").all_inner_texts())
            if os.environ.get("SIGMAQUANT_UPDATE_SCREENSHOT"):                            # README's picture of the one-call use
                page.set_viewport_size(dict(width=1500, height=2300)); page.wait_for_timeout(1500)
                page.locator(".jp-Notebook .jp-Cell").nth(1).scroll_into_view_if_needed(); page.wait_for_timeout(500)
                (ROOT/"nbs"/"images").mkdir(exist_ok=True); page.screenshot(path=str(ROOT/"nbs"/"images"/"explore_jupyterlab.png"))
            browser.close()
        assert "Traceback" not in outputs and "Error" not in outputs, outputs[-2000:]
        assert not errors, errors
        assert not blocked, f"requests off this machine: {blocked}"
        print(f"JupyterLab: page requested -> explorer drawn in {paint_s:.1f} s")
    finally:
        proc.terminate()
        try: proc.wait(10)
        except subprocess.TimeoutExpired: proc.kill()
        log.close()
