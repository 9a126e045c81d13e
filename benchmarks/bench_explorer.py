"""Benchmark the explorer in a real browser: slider → view latency while a refinement runs.

Starts `panel serve nbs/explorer.ipynb` on a free localhost port, opens it in headless Chromium (Python
`playwright` driving the system `/usr/bin/chromium`), starts a refinement and then moves the accuracy-drop,
size and energy sliders with the keyboard, one key press at a time. The latency of a move is the time
from the key press (a `keydown` listener in the page) to the moment the browser has received the view
update showing the new budget (a Bokeh document change whose text carries the new value), measured with
`performance.now()` in the page. Each press supersedes the running refinement, so a search is always
running in the server's background thread while the views update. Targets (issue 13): p95 ≤ 150 ms on 2 cores; first paint ≤ 5 s.

Writes `<out>/explorer.json` and `<out>/explorer.md` (a markdown table) and prints the table.

    python benchmarks/bench_explorer.py --out benchmarks/results

The helpers (`ensure_chromium`, `ExplorerServer`, `launch`, `open_app`, `press`, ...) are shared with
`tests/test_browser.py`.
"""
from __future__ import annotations
import argparse, contextlib, json, os, platform, shutil, socket, statistics, subprocess, sys, tempfile, time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# ---------------------------------------------------------------------------------------------------
# browser and server helpers (also used by tests/test_browser.py)

def ensure_chromium(install:bool=True) -> str:
    "Path of a Chromium binary; installs the Debian package when missing and running as root. Raises RuntimeError with the reason."
    for p in (os.environ.get("SIGMAQUANT_CHROMIUM"), CHROMIUM, shutil.which("chromium"), shutil.which("chromium-browser")):
        if p and Path(p).exists(): return p
    if not install: raise RuntimeError("no Chromium found (set SIGMAQUANT_CHROMIUM or install the Debian package chromium)")
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError("Chromium is missing and cannot be installed here (needs root and apt-get): apt-get install -y chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0: raise RuntimeError(f"{' '.join(cmd)} failed: {(r.stderr or r.stdout)[-500:]}")
    if Path(CHROMIUM).exists(): return CHROMIUM
    raise RuntimeError("apt-get installed chromium but /usr/bin/chromium is still missing")

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

class ExplorerServer:
    "`panel serve nbs/explorer.ipynb` on a free localhost port as a subprocess (context manager)."
    def __init__(self, port:int|None=None, notebook:Path=ROOT/"nbs"/"explorer.ipynb", env:dict|None=None, log_path:Path|None=None):
        from sigmaquant_lab.explorer import serve_command
        self.port = port or free_port()
        self.cmd = [sys.executable, "-m", *serve_command(notebook, "127.0.0.1", self.port)]   # panel from this interpreter
        self.url = f"http://127.0.0.1:{self.port}/{Path(notebook).stem}"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="explorer-serve-", suffix=".log")[1])
        self.proc = None

    def __enter__(self):
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if self.proc.poll() is not None: raise RuntimeError(f"panel serve exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), 0.2).close(); return self
            time.sleep(0.2)
        raise RuntimeError(f"panel serve did not listen on port {self.port} within 60 s:\n{self.log()[-3000:]}")

    def log(self) -> str: return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try: self.proc.wait(10)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait(5)
        self._log.close()

def launch(pw, executable:str):
    "Headless Chromium from the system binary (Playwright's own download is not used)."
    return pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)

# records key presses and every text change the server sends (titles, status) with performance.now()
HOOK = """() => {
  if (window.__sq) return true;
  const doc = (window.Bokeh && Bokeh.documents.length) ? Bokeh.documents[0] : null;
  if (!doc) return false;
  window.__sq = {keys: [], texts: []};
  document.addEventListener('keydown', () => window.__sq.keys.push(performance.now()), true);
  doc.on_change((ev) => {
    for (const e of (ev.events ? ev.events : [ev]))
      if (e.attr === 'text' && typeof e.value === 'string') window.__sq.texts.push([performance.now(), e.value]);
  }, true);
  return true;
}"""

class App:
    "One browser page on the explorer: console errors, the hook, slider key presses, waits."
    def __init__(self, browser, url:str, viewport=(1500, 1250), block_external:bool=True):
        self.page = browser.new_page(viewport=dict(width=viewport[0], height=viewport[1]))
        self.errors, self.missed, self.blocked = [], 0, []   # missed: key presses the slider did not take (pressed again)
        if block_external: self.page.route("**/*", self._local_only)   # offline: every resource must come from the server
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.goto(url, timeout=120_000)

    def _local_only(self, route):
        "Let localhost (and data:/blob:) requests through; abort and record every other one."
        u = route.request.url
        if u.startswith(("data:", "blob:")) or urlparse(u).hostname in ("127.0.0.1", "localhost", "::1"): route.continue_()
        else: self.blocked.append(u); route.abort()

    def view_titles(self) -> dict:
        "{view: title text} of every plot in the page (their figures carry the css class `sq-view-<name>`)."
        return self.page.evaluate("""() => { const out = {}; for (const m of Bokeh.documents[0].all_models) {
            const c = (m.css_classes || []).find(x => x.startsWith('sq-view-'));
            if (c && m.title && m.title.text !== undefined) out[c.slice(8)] = m.title.text; } return out; }""")

    def wait_views(self, timeout_s:float=120):
        "Wait for the plots (the dataset loads in the background) and install the hook."
        self.page.locator(".sq-view-zone canvas").first.wait_for(timeout=timeout_s * 1000)
        end = time.monotonic() + 10
        while not self.page.evaluate(HOOK):
            if time.monotonic() > end: raise RuntimeError("the Bokeh document never appeared")
            time.sleep(0.1)
        return self

    def status(self) -> str: return self.page.locator(".sq-status p").first.inner_text()

    def wait_status(self, *words, timeout_s:float=30) -> str:
        "Wait until the status line contains one of `words`."
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            s = self.status()
            if any(w in s for w in words): return s
            self.page.wait_for_timeout(50)
        raise TimeoutError(f"status never showed {words}; last: {self.status()!r}")

    def handle(self, slider:str): return self.page.locator(f".sq-{slider} .noUi-handle").first

    def slider_value(self, slider:str) -> float:
        "The value of a slider's Bokeh model in the page."
        return self.page.evaluate("""(c) => { for (const m of Bokeh.documents[0].all_models)
            if (m.css_classes && m.css_classes.includes(c) && m.value !== undefined) return m.value; return null; }""", f"sq-{slider}")

    def press(self, slider:str, key:str="ArrowRight") -> float:
        "Focus a slider handle (css class `sq-<slider>`) and press a key; returns the page time of the keydown."
        h = self.handle(slider)
        for _ in range(5):
            h.focus()
            if h.evaluate("e => e.getRootNode().activeElement === e"): break
            self.page.wait_for_timeout(20)
        else: raise RuntimeError(f"cannot focus the {slider} slider")
        n = self.page.evaluate("() => window.__sq.keys.length")
        self.page.keyboard.press(key)
        return self.page.evaluate(f"() => window.__sq.keys[{n}]")

    def move_to(self, slider:str, target:float, step:float, timeout_s:float=20):
        "Press arrow keys until the slider's model holds `target` (a key press the server overrides with an older value is pressed again)."
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            v = self.slider_value(slider)
            if abs(v - target) < step / 2: return v
            self.press(slider, "ArrowRight" if v < target else "ArrowLeft")
            self.page.wait_for_timeout(30)
        raise TimeoutError(f"the {slider} slider did not reach {target} within {timeout_s} s (at {self.slider_value(slider)})")

    def wait_text(self, needle:str, after:float, timeout_s:float=10) -> float:
        "Page time of the first text change after `after` containing `needle`."
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            hit = self.page.evaluate("([n, t]) => { const r = window.__sq.texts.find(x => x[0] >= t && x[1].includes(n)); return r ? r[0] : null; }",
                                     [needle, after])
            if hit is not None: return hit
            self.page.wait_for_timeout(10)
        recent = self.page.evaluate("() => window.__sq.texts.slice(-6).map(x => x[1].slice(0, 90))")
        raise TimeoutError(f"no view showed {needle!r} within {timeout_s} s; last texts: {recent}")

    def click(self, name:str): self.page.locator(f".sq-{name} button").first.click()

# slider name → (param start value, step, bounds, text the views show for a value)
SLIDERS = dict(
    size=(0.35, 0.01, (0.12, 1.0), lambda v: f"size ≤ {round(v * 100)}%"),
    acc=(0.01, 0.0025, (0.0, 0.1), lambda v: f"drop ≤ {v * 100:.2f} pt"),
    energy=(1.0, 0.01, (0.3, 1.5), lambda v: f"energy ≤ {v:.2f}×"),
)

def measure(app:App, presses:int, sliders=("size", "acc", "energy"), seed:int=0, need_running:bool=True, gap_ms=(300, 2500)) -> list[dict]:
    "Move the sliders `presses` times (cycling, two steps up then two down); one record per press."
    import random
    rng = random.Random(seed)
    out = []
    for i in range(presses):
        name = sliders[i % len(sliders)]
        _, step, (lo, hi), text = SLIDERS[name]
        before = app.slider_value(name)
        up = (i // len(sliders)) % 4 < 2
        if not lo + step / 2 <= before + (step if up else -step) <= hi + step / 2: up = not up
        for _ in range(50):                                        # press while a search runs, at a random phase of it
            if need_running:
                if any(w in app.status() for w in ("done", "cancelled", "idle")): app.click("start")   # finished: start another (untimed)
                app.wait_status("running", timeout_s=30)
            app.page.wait_for_timeout(rng.randint(*gap_ms))
            status = app.status(); running = "running" in status
            if running or not need_running: break
        for attempt in range(3):                                   # a key press the slider ignored is pressed again
            t_key = app.press(name, "ArrowRight" if up else "ArrowLeft")
            for _ in range(25):
                nv = app.slider_value(name)
                if abs(nv - before) >= step / 2: break
                app.page.wait_for_timeout(20)
            if abs(nv - before) >= step / 2: break
            app.missed += 1
        else: raise RuntimeError(f"the {name} slider did not move ({before} → {nv})")
        t_view = app.wait_text(text(nv), t_key)
        out.append(dict(slider=name, key="ArrowRight" if up else "ArrowLeft", value=round(nv, 6), latency_ms=round(t_view - t_key, 1),
                        running=running, status=status[:80]))
    return out

def summarize(records:list[dict]) -> dict:
    lat = sorted(r["latency_ms"] for r in records)
    q = lambda p: lat[min(len(lat) - 1, max(0, round(p * (len(lat) - 1))))]
    return dict(n=len(lat), median_ms=statistics.median(lat), p95_ms=q(0.95), max_ms=lat[-1], min_ms=lat[0],
                mean_ms=round(statistics.fmean(lat), 1), running_frac=sum(r["running"] for r in records) / len(records))

def cancel_latency(dataset:str="digits", model_name:str="digits_cnn", runs:int=5, epochs:int=4) -> dict:
    "In-process: start a refinement, cancel it inside its first Phase-1 QAT cycle, time cancel -> worker thread ended."
    import torch
    from sigmaquant_lab.core import Budget
    from sigmaquant_lab.explorer import load_workbench
    from sigmaquant_lab.explorer_worker import SearchWorker
    from sigmaquant_lab.search import Progress
    from sigmaquant_lab.sigmaquant import SigmaQuantConfig
    torch.set_num_threads(1)
    t0 = time.perf_counter(); wb = load_workbench(dataset, model_name); load_s = time.perf_counter() - t0
    cfg = SigmaQuantConfig.from_settings(budget=Budget(0.01, 0.3), e1=epochs, e2=epochs, device="cpu")
    lat, start = [], []
    for i in range(runs):        # as in the app: the first run builds the INT8 reference, later ones reuse it
        t = time.perf_counter(); w = SearchWorker(wb.model, wb.data, cfg, references=wb.references).start()
        while not any(isinstance(e, Progress) and e.what.startswith("phase1") for e in w.drain()): time.sleep(0.002)
        start.append(time.perf_counter() - t)
        time.sleep(0.05 * i)                                  # land at different batches
        t = time.perf_counter(); w.cancel(); w.join(60); lat.append((time.perf_counter() - t) * 1000)
    return dict(dataset=dataset, model=model_name, train_images=len(wb.data.y_train), runs=runs, load_s=round(load_s, 1),
                median_ms=round(statistics.median(lat), 1), max_ms=round(max(lat), 1), all_ms=[round(x, 1) for x in lat],
                start_to_phase1_s=[round(x, 2) for x in start])

_EXPLORE = r"""
import time, torch, torch.nn as nn, json
from sklearn.datasets import load_digits
t0 = time.perf_counter()
from sigmaquant_lab.explorer_app import explore
import panel as pn
t_imp = time.perf_counter() - t0
d = load_digits(); x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16; y = torch.tensor(d.target)
class MyNet(nn.Module):
    def __init__(self):
        super().__init__(); self.conv, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8 * 16, 10)
    def forward(self, x): return self.fc(nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))
net = MyNet()
t0 = time.perf_counter(); app = explore(net, (x, y), auto_refine=False, ladder=[]); t_call = time.perf_counter() - t0
pn.panel(app).get_root(); t_views = time.perf_counter() - t0
print(json.dumps(dict(import_s=round(t_imp, 2), explore_call_s=round(t_call, 2), explore_views_s=round(t_views, 2))))
"""

def time_pick(app:App, model:str, timeout_s:float=120) -> dict:
    "Pick a model in the served app: seconds from the pick to the first view naming it (its float model trained first when not cached)."
    cache = ROOT/".cache"/"sigmaquant-lab"
    cached = any(cache.glob(f"fp32-digits-{model}-*.pt"))
    t = app.page.evaluate("() => performance.now()")
    app.page.locator(".sq-model select").first.select_option(model)
    hit = app.wait_text(f"digits / {model}", t, timeout_s=timeout_s)
    app.wait_status("idle", "done", timeout_s=timeout_s)
    return dict(model=model, float_model_cached=cached, seconds=round((hit - t) / 1000, 2))

def time_explore() -> dict:
    "`explore(model, (x, y))` in a fresh process: the imports a kernel pays once, then the call and the view models (a running kernel's cost)."
    r = subprocess.run([sys.executable, "-c", _EXPLORE], capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode != 0: raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])

# ---------------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results", help="folder for explorer.json and explorer.md")
    p.add_argument("--presses", type=int, default=45, help="slider key presses to time")
    p.add_argument("--warmup", type=int, default=6, help="untimed presses first")
    p.add_argument("--epochs", type=int, default=2, help="QAT epochs per round/step of the refinements")
    p.add_argument("--target-ms", type=float, default=150.0, help="p95 target")
    p.add_argument("--target-paint-s", type=float, default=5.0, help="first-paint target")
    p.add_argument("--screenshot", default=None, help="also save a screenshot here")
    p.add_argument("--app", default=str(ROOT/"nbs"/"explorer.ipynb"), help="app to serve (notebook or script)")
    p.add_argument("--cancel-runs", type=int, default=5, help="in-process cancel timings per dataset (target: worker ends within 1 s)")
    p.add_argument("--cold-pick", action="store_true", help="drop the cached ResNet-20 float model on digits first (the pick then trains it)")
    p.add_argument("--cifar", action="store_true", help="also time cancel on CIFAR-10 / ResNet-20 (2,000-image subset) when the zip exists")
    a = p.parse_args(argv)
    from playwright.sync_api import sync_playwright
    exe = ensure_chromium()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    expl = time_explore()                  # target: views built in <= 5 s in a running kernel
    with ExplorerServer(notebook=Path(a.app)) as srv, sync_playwright() as pw:
        browser = launch(pw, exe)
        t0 = time.perf_counter(); app = App(browser, srv.url)
        app.page.locator(".sq-view-zone canvas").first.wait_for(timeout=120_000); first_paint = time.perf_counter() - t0   # the plots are up
        app.wait_views(); t_load = time.perf_counter() - t0
        for _ in range(a.epochs - 1): app.press("epochs")      # longer QAT cycles: the search runs throughout
        app.click("start"); app.wait_status("running")
        measure(app, a.warmup, seed=1)
        recs = measure(app, a.presses, seed=2)
        t_c = time.perf_counter(); app.click("cancel"); app.wait_status("cancelled", "done", timeout_s=30)
        cancel_page_s = time.perf_counter() - t_c
        if a.screenshot: app.page.screenshot(path=a.screenshot, full_page=True)
        # a new model picked on digits (target <= 10 s): ResNet-20 (its float model trained now unless cached), then back
        if a.cold_pick:
            for f in (ROOT/".cache"/"sigmaquant-lab").glob("fp32-digits-resnet20-*.pt"): f.unlink()
        picks = [time_pick(app, "resnet20"), time_pick(app, "digits_cnn")]
        errors = list(app.errors)
        browser.close()
    cancels = [cancel_latency(runs=a.cancel_runs)]
    if a.cifar:
        from sigmaquant_lab.explorer import available_datasets
        if "cifar10" in available_datasets(): cancels.append(cancel_latency("cifar10", "resnet20", runs=a.cancel_runs, epochs=1))
    s = summarize(recs)
    per = {k: summarize([r for r in recs if r["slider"] == k]) for k in ("size", "acc", "energy")}
    res = dict(benchmark="explorer slider -> view latency (headless Chromium, panel serve)", created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
               machine=dict(platform=platform.platform(), python=platform.python_version(), cpus=os.cpu_count(),
                            loadavg_1m_after=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                            affinity=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None),
               setup=dict(data="digits", model="digits_cnn", epochs_per_cycle=a.epochs, worker_threads=1, period_ms=200, presses=a.presses,
                          warmup=a.warmup, definition="keydown on a slider handle -> the browser receives the view update showing the new budget"),
               first_paint_s=round(first_paint, 2), p95_ms=s["p95_ms"], page_load_s=round(t_load, 2), target_p95_ms=a.target_ms,
               target_first_paint_s=a.target_paint_s, meets_first_paint=first_paint <= a.target_paint_s, explore=expl, model_picks=picks, target_pick_s=10.0,
               meets_pick=all(p["seconds"] <= 10.0 for p in picks), overall=s, per_slider=per, console_errors=errors,
               missed_key_presses=app.missed, cancel_click_to_page_s=round(cancel_page_s, 2), cancel_worker=cancels,
               meets_target=s["p95_ms"] <= a.target_ms and all(c["max_ms"] <= 1000 for c in cancels), wall_s=round(time.perf_counter() - t_start, 1), records=recs)
    (out/"explorer.json").write_text(json.dumps(res, indent=1))
    rows = ["| slider | presses | median ms | p95 ms | max ms | refinement running |", "|---|---:|---:|---:|---:|---:|"]
    for k, v in [*per.items(), ("all", s)]:
        rows.append(f"| {k} | {v['n']} | {v['median_ms']:.0f} | {v['p95_ms']:.0f} | {v['max_ms']:.0f} | {v['running_frac']:.0%} |")
    md = (f"Explorer slider → view latency, headless Chromium on {res['machine']['cpus']} CPUs, digits / digits_cnn, "
          f"refinement in the background ({a.epochs} QAT epochs per cycle, 1 torch thread). Target p95 ≤ {a.target_ms:.0f} ms: "
          f"{'met' if res['meets_target'] else 'NOT met'}. 1-min load average after the run: {res['machine']['loadavg_1m_after']} "
          f"(other processes share the machine); key presses the slider ignored and that were pressed again: {app.missed}. "
          f"First paint (page requested → the plots drawn): {first_paint:.2f} s (target ≤ {a.target_paint_s:g} s: "
          f"{'met' if first_paint <= a.target_paint_s else 'NOT met'}). `explore(model, (x, y))` in a running kernel: "
          f"{expl['explore_call_s']:.2f} s to the app, {expl['explore_views_s']:.2f} s to its view models (target ≤ 5 s; "
          f"the kernel's first import of the app: {expl['import_s']:.2f} s). A new model picked in the served app on digits "
          f"(target ≤ 10 s: {'met' if res['meets_pick'] else 'NOT met'}): "
          + "; ".join(f"{p['model']} {p['seconds']:.2f} s ({'float model cached' if p['float_model_cached'] else 'float model trained now'})" for p in picks)
          + ".\n\n"
          + "\n".join(rows) + "\n\nCancel (target: the search thread ends within 1 s; click → 'cancelled' shown in the page "
          f"took {cancel_page_s:.2f} s); start → first Phase-1 QAT batch, first run (builds the INT8 reference) and later runs (reuse it):"
          "\n\n| data / model | train images | runs | cancel median ms | cancel max ms | start, first run s | start, later runs s |\n|---|---:|---:|---:|---:|---:|---:|\n"
          + "\n".join(f"| {c['dataset']} / {c['model']} | {c['train_images']} | {c['runs']} | {c['median_ms']:.0f} | {c['max_ms']:.0f} | "
                      f"{c['start_to_phase1_s'][0]:.2f} | {statistics.median(c['start_to_phase1_s'][1:] or [float('nan')]):.2f} |" for c in cancels) + "\n")
    (out/"explorer.md").write_text(md)
    print(md)
    return 0 if res["meets_target"] and not errors else 1

if __name__ == "__main__":
    sys.exit(main())
