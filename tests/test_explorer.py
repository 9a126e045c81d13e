"Explorer state and worker, headless (slider spam, cancel, sessions, bad input), and the explorer notebook in a real Jupyter kernel."
import os, random, threading, time
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent


def _workers():
    return [t for t in threading.enumerate() if t.name.startswith("sigmaquant-search") and t.is_alive()]


@pytest.fixture(scope="module")
def workbench():
    from sigmaquant_lab.explorer import load_workbench
    return load_workbench("digits", "digits_cnn")


def _state(wb, **kw):
    "A state on the shared workbench (loading digits once per module)."
    from sigmaquant_lab.explorer import ExplorerState, WorkbenchLoaded
    st = ExplorerState(**kw)
    st.apply(WorkbenchLoaded(wb))
    return st


@pytest.mark.timeout(120)
def test_slider_spam_never_two_workers(workbench):
    "200 slider moves in ~5 s, polled like the app's 200 ms callback: never two search threads, no deadlock, a clean cancel."
    st = _state(workbench, auto_refine=True, epochs=2)
    peak, stop = [0], threading.Event()
    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], len(_workers())); time.sleep(0.002)
    w = threading.Thread(target=watch, daemon=True); w.start()
    rng = random.Random(0)
    t0 = time.perf_counter(); last_poll = t0
    try:
        for i in range(200):
            k = rng.choice(["size_frac", "max_acc_drop", "energy_frac", "lam"])
            lo, hi = st.param[k].bounds
            lo = max(lo, 0.26) if k == "size_frac" else lo      # stay feasible so every move really (re)starts a search
            setattr(st, k, round(rng.uniform(lo, hi), 3))
            if time.perf_counter() - last_poll >= 0.2: st.poll(); last_poll = time.perf_counter()
            time.sleep(0.025)
        spam_s = time.perf_counter() - t0
        assert st.running or st.busy()                           # the last move left a refinement running or pending
        st.cancel()
        assert st.wait(10), "the state did not settle after cancel"
    finally:
        stop.set(); w.join(1)
    print(f"200 moves in {spam_s:.1f} s")   # timing is the benchmark's business (benchmarks/bench_explorer.py)
    assert peak[0] <= 1, f"{peak[0]} search threads ran at once"
    assert _workers() == []
    assert st.status == "cancelled", (st.status, st.message)


@pytest.mark.timeout(60)
def test_cancel_stops_worker_inside_its_qat_cycle(workbench):
    "Cancel lands at the next batch: the worker stops inside the 8-epoch cycle it was in and skips the final evaluation."
    from sigmaquant_lab.search import Progress, RunFinished
    from sigmaquant_lab.explorer_worker import SearchWorker
    st = _state(workbench, auto_refine=False, epochs=8)
    w = SearchWorker(workbench.model, workbench.data, st.search_config()).start()
    end = time.monotonic() + 30
    while not any(isinstance(e, Progress) and e.what.startswith("phase1") for e in w.drain()):   # inside a QAT epoch
        assert time.monotonic() < end; time.sleep(0.005)
    w.cancel()
    assert w.join(30), "the worker did not stop after cancel"
    evs = w.drain()
    prog = [e for e in evs if isinstance(e, Progress)]
    assert not prog or (prog[-1].epoch, prog[-1].batch) < (prog[-1].epochs, prog[-1].batches), "the cycle ran to its end"
    assert prog == [] or prog[-1].epoch <= 2
    fin = [e for e in evs if isinstance(e, RunFinished)]
    assert w.result.status == "CANCELLED" and fin and fin[-1].acc != fin[-1].acc   # nan: not measured after a cancel


@pytest.mark.timeout(60)
def test_cancel_through_state_and_resume(workbench):
    st = _state(workbench, auto_refine=False, epochs=8, max_steps=40)
    st.refine()
    end = time.monotonic() + 30
    while "phase1" not in st.message:
        assert time.monotonic() < end; st.poll(); time.sleep(0.02)
    st.cancel()
    assert st.status == "cancelling"
    assert st.worker.join(30)
    st.wait(5)
    assert st.status == "cancelled" and st.progress == 0.0
    hist = st.snapshot.history
    st.epochs = 1; st.refine(resume=True)                     # resume keeps the trajectory drawn so far
    assert st.wait(60) and st.status == "done"
    assert st.snapshot.history[:len(hist)] == hist and len(st.snapshot.history) > len(hist)


def test_states_do_not_share(workbench):
    "Two sessions: separate inputs, snapshots and workers."
    a, b = _state(workbench, auto_refine=False), _state(workbench, auto_refine=False)
    a.size_frac = 0.5
    assert b.size_frac == 0.35 and b.snapshot.budget.size_frac == 0.35 and a.snapshot is not b.snapshot
    a.refine()
    assert a.worker is not None and b.worker is None and b.status == "idle"
    a.cancel(); assert a.wait(10)


def test_bad_input_is_a_message(workbench):
    from sigmaquant_lab.explorer import ExplorerState
    st = ExplorerState(dataset="path", data_path="/no/such/dataset.zip")
    st.load(wait=True)
    assert st.status == "error" and "fix:" in st.message and st.snapshot is None
    st = _state(workbench, auto_refine=True)
    st.bits = [4, 8]                                            # 4 bits everywhere is 50 % of INT8 > 35 % budget
    assert st.status == "error" and "infeasible" in st.message and not st.busy()
    st.bits = [2, 4, 6, 8]
    assert st.status != "error"
    st.cancel(); st.wait(10)


def test_serve_command_binds_localhost():
    from sigmaquant_lab.core import load_settings
    from sigmaquant_lab.explorer import serve_command
    s = load_settings()
    cmd = serve_command()
    assert cmd[cmd.index("--address") + 1] == s.str("explorer", "host") == "127.0.0.1"
    assert cmd[cmd.index("--port") + 1] == str(s.int("explorer", "port"))


@pytest.mark.timeout(300)
def test_explorer_notebook_in_jupyter_kernel():
    "nbs/explorer.ipynb runs in a real kernel, renders the app inline, and a refinement completes there."
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(ROOT/"nbs"/"explorer.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "assert app.state.snapshot is not None and set(app.views) and app._cb is not None\n"
        "app.state.max_acc_drop = 0.05\n"
        "app.state.refine()\n"
        "import time\n"
        "end = time.monotonic() + 120\n"
        "while (app.state.busy() or app.stale()) and time.monotonic() < end: app.tick(); time.sleep(0.05)\n"
        "assert app.state.status == 'done', (app.state.status, app.state.message)\n"
        "print('STATUS', app.state.status, len(app.state.snapshot.history))"))
    client = NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(ROOT/"nbs")}})
    client.execute()
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outs if o.get("output_type") == "error"]
    mimes = {m for o in outs for m in o.get("data", {})}
    assert mimes & {"application/vnd.holoviews_exec.v0+json", "text/html"}, mimes      # the app rendered inline
    assert any("STATUS done" in o.get("text", "") for o in outs)


def test_headless_explorer_imports_without_ui_stack():
    "The state, worker and events import without Panel, HoloViews or Bokeh; the app's names come from `explorer_app`."
    import subprocess, sys
    code = ("import sys, sigmaquant_lab.explorer as e; assert not {'panel','holoviews','bokeh'} & set(sys.modules), sorted(sys.modules);"
            "from sigmaquant_lab.explorer import ExplorerState, WorkbenchLoaded, serve_command; from sigmaquant_lab.explorer_worker import SearchWorker;"
            "from sigmaquant_lab.explorer_app import ExplorerApp; import sigmaquant_lab.explorer_app as a; assert ExplorerApp is a.ExplorerApp; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.timeout(240)
def test_explore_own_model_save_and_downloads(workbench, tmp_path, capsys):
    "explore() on a model and an (x, y) pair: the sidebar names it, a budget moves, a refinement ends; Save run is listed by `sigmaquant-lab runs` and exports with `sigmaquant-lab export`; the ONNX download loads in onnxruntime."
    import onnxruntime as ort
    import panel as pn
    from sigmaquant_lab.cli import main
    from sigmaquant_lab.explorer_app import explore
    wb = workbench
    app = explore(wb.model, (wb.data.x_train, wb.data.y_train), name="digits_cnn", auto_refine=False, runs_dir=str(tmp_path/"runs"))
    st = app.state
    assert st.given and st.workbench.model is not wb.model and st.workbench.model_name == "digits_cnn"
    assert not [o for o in app._layout[0].objects if isinstance(o, pn.widgets.Select)]     # no dataset/model picker
    assert "digits_cnn" in app._layout[0].objects[1].object
    st.max_acc_drop = 0.03
    assert "drop ≤ 3.00 pt" in app.views["zone"].plot.state.title.text
    st.refine()
    end = time.monotonic() + 150
    while (st.busy() or app.stale()) and time.monotonic() < end: app.tick(); time.sleep(0.05)
    assert st.status == "done", (st.status, st.message)
    run = app.save_run()
    assert run is not None and run.is_dir()
    capsys.readouterr()
    assert main(["runs", "--out", str(tmp_path/"runs")]) == 0
    listing = capsys.readouterr().out
    assert run.name in listing and "sigmaquant" in listing, listing
    assert main(["export", run.name, "--out", str(tmp_path/"runs")]) == 0    # a built-in model's record rebuilds like a CLI run's
    assert (run/"model.packed.safetensors").stat().st_size > 0
    f = app._file("onnx")
    sess = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    x = wb.data.normalize(wb.data.x_val[:16]).numpy()
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert out.shape == (16, wb.data.num_classes)
    st.close()


def test_snapshot_from_bops_result_keeps_bops_budget(workbench):
    "A snapshot built from a BOPs search result keeps the BOPs budget (plots once read only size, energy and latency back)."
    from sigmaquant_lab.core import Budget
    from sigmaquant_lab.plots import Snapshot
    from sigmaquant_lab.search import search
    from sigmaquant_lab.sigmaquant import SigmaQuantConfig
    cfg = SigmaQuantConfig(budget=Budget(max_acc_drop=0.05, size_frac=1.0, bops_frac=0.5), e1=1, e2=1, int8_epochs=1, max_steps=2, device="cpu")
    res = search(workbench.model, workbench.data, cfg)
    assert res.costs["bops_frac"] <= 0.5 + 1e-9
    snap = Snapshot.from_result(res, workbench.cost_model)
    assert snap.budget.bops_frac == 0.5 and snap.budget == cfg.budget


def test_unknown_event_is_refused(workbench):
    "An event the reducer has no handler for is refused with a clear error (not silently dropped) and changes nothing."
    from dataclasses import dataclass
    from sigmaquant_lab.search import Event, StepFinished
    from sigmaquant_lab.explorer import HANDLERS
    @dataclass(frozen=True)
    class StepDone(Event):          # e.g. StepFinished renamed without its handler
        step:int
    st = _state(workbench, auto_refine=False)
    snap, status = st.snapshot, st.status
    with pytest.raises(TypeError, match="cannot apply StepDone: explorer.HANDLERS has no handler"):
        st.apply(StepDone(1))
    assert st.snapshot is snap and st.status == status
    assert StepFinished in HANDLERS


@pytest.mark.timeout(240)
def test_slider_map_estimate_then_measured(workbench):
    "A slider that implies a new map: its post-training estimate appears (hollow 'estimate' marker, never a measured point); the refinement's measured result replaces it."
    from sigmaquant_lab.explorer_worker import EstimateReady
    from sigmaquant_lab.plots import zone_data
    st = _state(workbench, auto_refine=False, epochs=1, max_steps=2)
    assert st.snapshot.estimate is None
    before = st.snapshot.bits
    st.bits = [2, 8]                                            # other candidate widths: a new σ-preview map
    assert st.snapshot.bits != before and st.snapshot.source == "σ preview"
    end = time.monotonic() + 60
    while st.snapshot.estimate is None:
        assert time.monotonic() < end, "no estimate arrived"; st.poll(); time.sleep(0.02)
    s, e = st.snapshot, st.snapshot.estimate
    assert e["kind"] == "estimate" and tuple(e["bits"]) == s.bits and 0 < e["acc"] <= 1 and e["n"] > 0
    assert e["drop_pt"] == pytest.approx((e["ref_acc"] - e["acc"]) * 100) and e["size_frac"] == pytest.approx(s.size_frac)
    assert s.history == () and s.ref is None and st._ref_acc is None      # nothing was stored as measured
    assert any(r["event"] == "Estimate" and "not measured" in r["decision"] for r in s.log)
    est, est_labels = zone_data(s).layers[4:6]
    assert est_labels["text"] == ["estimate"] and list(est["size"]) == [pytest.approx(s.size_frac * 100)]
    # an estimate of a map no longer shown is dropped; an error is only a log line
    st.apply(EstimateReady(tuple(8 for _ in s.bits), 0.5, 0.9, 10, 0.0))
    assert st.snapshot.estimate == e
    st.apply(EstimateReady(s.bits, float("nan"), float("nan"), 0, 0.0, error="boom"))
    assert st.snapshot.estimate == e and "no estimate: boom" in st.snapshot.log[-1]["decision"]
    # the refinement measures: when it finishes, the measured trajectory replaces the estimate
    st.refine()
    assert st.wait(200), "the refinement did not finish"
    s = st.snapshot
    assert st.status == "done", (st.status, st.message)
    assert s.estimate is None and s.history and all(p["acc_kind"] == "measured" for p in s.history)
    assert zone_data(s).layers[5]["text"] == [] and len(zone_data(s).layers[-1]["size"]) == len(s.history) + 1
    # a late estimate of the measured map is not shown over it
    st.apply(EstimateReady(s.bits, 0.5, 0.9, 10, 0.0))
    assert st.snapshot.estimate is None
    st.close()
    assert st.controller.estimator is None
