"""Accuracy vs size / energy of every search method at matched budgets (issue 7): the Pareto benchmark.

Full mode (a GPU machine): ResNet-20 on CIFAR-10 (`get_data("cifar10")`, the shared cifar10-jpg.zip).
Quick mode (`--quick`, 2 CPU cores, a few minutes): the same pipeline on digits with the small CNN.

Protocol (both modes; the numbers of each mode are in PROTOCOLS below and are written into the results):
1. FP32 model, trained once here with a fixed recipe (full: SGD lr 0.1, momentum 0.9 (Nesterov), weight decay 5e-4,
   cosine schedule, 60 epochs, batch 256, bf16 autocast on the GPU, random-crop + flip augmentation), cached.
   Every run of every method starts from these same weights.
2. INT8 reference (W8A8, calibrated + `int8_epochs` QAT) built by every run with its seed: all budgets are
   fractions of it.
3. Every registered method (SigmaQuant, uniform, random, AMED, and HAWQ / DiffMP once their modules exist) at the
   same budgets: average weight width 2, 2.4, 3, 4, 6 bits with 8-bit activations (size_frac 0.25, 0.3, 0.375,
   0.5, 0.75 of INT8), and 1.5x / 2x / 4x the BOPs of uniform W2A2 (bops_frac 0.09375, 0.125, 0.25, no size
   limit) when the library's `Budget` has `bops_frac`.
4. Same quantizer for every method within a table, both quantizers run (`minmax`, the paper's; `lsq`, the
   stronger recipe); same QAT recipe (settings.ini [train]); same seeds (0, 1, 2); equal QAT epochs: SigmaQuant
   runs first at each (budget, seed) and every fixed-budget method gets the QAT epochs it spent (`match_epochs`).
5. Report mean ± sample std over seeds of test accuracy (val accuracy is what the searches decide on), size,
   simulated energy (shift-add MAC array, fraction of INT8), QAT epochs and wall time (the search cost).

Writes benchmarks/results/pareto_<mode>.json, .md and .html (HoloViews/Bokeh, JavaScript inlined). Run records go to
<settings cache>/bench-runs/<mode>/<quantizer>/ (reused when the benchmark is started again with the same settings).

    python benchmarks/pareto_cifar10.py --quick                      # digits, 2 CPU cores
    python benchmarks/pareto_cifar10.py                              # CIFAR-10 / ResNet-20 on a GPU (Ray, 4 runs per GPU)
    python benchmarks/pareto_cifar10.py --plan                       # build and check every config, run nothing
    python benchmarks/pareto_cifar10.py --quick --backend local --seeds 0 --quantizers minmax   # smaller, no Ray
    python benchmarks/pareto_cifar10.py --budget-s 540 --results slices    # time-boxed resumable slices (GPU lease; see slices.py)
    python benchmarks/pareto_cifar10.py --tiny --budget-s 600              # their CPU twin
    python benchmarks/pareto_cifar10.py --protocol cpu-subset --budget-s 7200 --results benchmarks/results/cifar_subset   # issue 23, this CPU
"""
import argparse, datetime as dt, json, os, platform, subprocess, sys, time
from dataclasses import fields, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sigmaquant_lab.core import Budget, load_settings, resolve_device, seed_everything, atomic_write, atomic_write_json, to_jsonable
from sigmaquant_lab.data import get_data
from sigmaquant_lab.models import get_model
from sigmaquant_lab.train import TrainConfig, train_, evaluate
from sigmaquant_lab.sweeps import SweepConfig, plan_sweep, default_methods, budget_tag
from sigmaquant_lab.sweep_run import run_sweep
from sigmaquant_lab.sweep_summary import summarize, summary_table, pareto_plot

SIZE_FRACS = (0.25, 0.3, 0.375, 0.5, 0.75)           # average weight widths 2, 2.4, 3, 4, 6 bits (A8)
BOPS_MULTS = (1.5, 2.0, 4.0)                         # x the BOPs of uniform W2A2 (= 4/64 of INT8)
HAS_BOPS = "bops_frac" in {f.name for f in fields(Budget)}

PROTOCOLS = {
    "full": dict(data="cifar10", model="resnet20", limit=None,
                 fp32=dict(epochs=60, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine", batch_size=256, seed=0),
                 sweep=dict(int8_epochs=2, e1=4, e2=2, rounds1=3, max_steps=20, batch_size=256, epochs=8, pin_first_last=8,
                            method_overrides={}),
                 device="cuda", num_cpus=None, cpus_per_task=4, gpus_per_task=0.25),
    "quick": dict(data="digits", model="digits_cnn", limit=None,
                  fp32=dict(epochs=30, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine", batch_size=128, seed=0),
                  sweep=dict(int8_epochs=1, e1=2, e2=1, rounds1=2, max_steps=6, batch_size=128, epochs=2, pin_first_last=8,
                             method_overrides={"amed": {"finetune_epochs": 1}, "diffmp": {"finetune_epochs": 1}, "hawq": {"probes": 20}}),
                  device="cpu", num_cpus=2, cpus_per_task=1, gpus_per_task=1.0),
}


def budgets(max_acc_drop):
    "The matched budgets: size (A8) and, when the library has it, BOPs."
    out = [dict(size_frac=f, max_acc_drop=max_acc_drop) for f in SIZE_FRACS]
    if HAS_BOPS: out += [dict(size_frac=1.0, bops_frac=m * 4 / 64, max_acc_drop=max_acc_drop) for m in BOPS_MULTS]
    return out


def budget_label(tag):
    "Readable budget names for the tables."
    for f in SIZE_FRACS:
        if tag.startswith(f"sz{f:g}-"): return f"avg {8*f:g} b ({f:.1%})"
    for m in BOPS_MULTS:
        if f"-bo{m*4/64:g}" in tag: return f"{m:g}x W2A2 BOPs"
    return tag


def train_fp32(data, model_name, r, device, cache_dir, progress=True):
    "The FP32 model of the protocol: trained once with recipe `r` and cached; returns (path, facts)."
    key = f"bench-fp32-{data.name}-{model_name}-{data.digest()}-e{r['epochs']}-lr{r['lr']}-wd{r['weight_decay']}-{r['schedule']}-b{r['batch_size']}-s{r['seed']}.pt"
    path, meta = Path(cache_dir)/key, Path(cache_dir)/(key + ".json")
    if path.exists() and meta.exists(): return path, json.loads(meta.read_text())
    dev = resolve_device(device)
    seed_everything(r["seed"])
    model = get_model(model_name, data.num_classes, data.in_shape).to(dev)
    cfg = TrainConfig(epochs=r["epochs"], lr=r["lr"], momentum=r["momentum"], weight_decay=r["weight_decay"], schedule=r["schedule"], bf16=True)
    t0 = time.perf_counter()
    rep = train_(model, data.loader("train", batch_size=r["batch_size"], device=dev, seed=r["seed"]), cfg, progress=progress, desc="fp32")
    wall = time.perf_counter() - t0
    facts = dict(recipe=r, device=str(dev), wall_s=wall, final_loss=rep["loss"], val_acc=evaluate(model, data.loader("val", device=dev)),
                 test_acc=evaluate(model, data.loader("test", device=dev)), augment=data.augment)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    atomic_write_json(meta, facts)
    return path, facts


def environment():
    def ver(m):
        try: return __import__(m).__version__
        except Exception: return None
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip() or None
    return dict(python=platform.python_version(), torch=torch.__version__, ray=ver("ray"), cpu_count=os.cpu_count(),
                torch_threads=torch.get_num_threads(), cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                platform=platform.platform(), git=git, date=dt.datetime.now().isoformat(timespec="seconds"))


def references(rows):
    "FP32 and INT8 accuracy per quantizer (one INT8 reference per seed: mean ± std over seeds)."
    out = {}
    for q in dict.fromkeys(r["quantizer"] for r in rows):
        per_seed = {}
        for r in rows:
            if r["quantizer"] == q and r.get("test_acc_int8") is not None: per_seed.setdefault(r["seed"], r)
        rs = list(per_seed.values())
        out[q] = summarize([dict(method="INT8 (W8A8)", budget_tag="—", quantizer=q, seed=r["seed"], status="OK", test_acc=r["test_acc_int8"],
                                 acc=r["acc_int8"], size_frac=1.0, energy_frac=1.0, fp32_test_acc=r["fp32_test_acc"]) for r in rs])[0] if rs else None
    return out


def write_markdown(path, mode, proto, fp32, refs, summary, env, wall_s, n_runs, args, sweeps):
    rows = [r for s in sweeps for r in s.rows]
    reused, run_s = sum(bool(r.get("reused")) for r in rows), sum(r.get("wall_s") or 0 for r in rows)
    L = [f"# Pareto benchmark: {mode} mode", "",
         f"{'ResNet-20 on CIFAR-10' if mode == 'full' else 'DigitsCNN on digits (sklearn 8x8)'}; {n_runs} runs "
         f"({reused} of them reused from an earlier invocation); this invocation {wall_s/60:.1f} min wall on {env['cpu_count']} CPU cores"
         f"{' + ' + env['cuda'] if env['cuda'] else ''} ({args.backend} backend); the runs' own wall times sum to {run_s/60:.1f} min; "
         f"git {env['git']}, {env['date']}.", "",
         "## Protocol", "",
         f"- FP32: SGD lr {proto['fp32']['lr']}, momentum {proto['fp32']['momentum']} (Nesterov), weight decay {proto['fp32']['weight_decay']}, "
         f"{proto['fp32']['schedule']} schedule, {proto['fp32']['epochs']} epochs, batch {proto['fp32']['batch_size']}, bf16 autocast on GPU; "
         f"reached test accuracy **{fp32['test_acc']:.2%}** (val {fp32['val_acc']:.2%}) in {fp32['wall_s']:.0f} s on {fp32['device']}.",
         f"- Every run: INT8 reference (W8A8, {proto['sweep']['int8_epochs']} QAT epoch(s)), then the method. QAT recipe from settings.ini "
         f"[train], batch {proto['sweep']['batch_size']}. SigmaQuant: e1 {proto['sweep']['e1']}, e2 {proto['sweep']['e2']}, "
         f"rounds1 {proto['sweep']['rounds1']}, max_steps {proto['sweep']['max_steps']}. Every fixed-budget method gets the QAT epochs "
         f"SigmaQuant spent at the same budget and seed (equal epochs); overrides {proto['sweep']['method_overrides'] or 'none'}.",
         f"- First conv and last FC: {'at %d bits (weights) for every method, the field convention' % proto['sweep']['pin_first_last'] if proto['sweep'].get('pin_first_last') else 'searched like every other layer'}.",
         f"- Methods: {', '.join(args.methods)}. Seeds: {', '.join(map(str, args.seeds))}. Max accuracy drop vs INT8: {args.max_acc_drop:g}.",
         "- Budgets: average weight width 2 / 2.4 / 3 / 4 / 6 bits with A8 (size 25 / 30 / 37.5 / 50 / 75 % of INT8)"
         + ("; 1.5x / 2x / 4x the BOPs of uniform W2A2 (BOPs 9.4 / 12.5 / 25 % of INT8, no size limit, activation bits searched)." if HAS_BOPS
            else "; BOPs budgets: not available in this library version (Budget has no bops_frac)."),
         "- Numbers: mean ± sample std over seeds (no ± with one seed). Test accuracy is measured once per run at the end; the "
         "searches decide on a validation split carved from train. Energy: simulated shift-add MAC array, fraction of the INT8 MAC "
         "array (METHOD §4). QAT epochs: after the INT8 reference. Wall s: per run, with "
         f"{'several runs sharing the machine' if args.backend == 'ray' else 'one run at a time'} — compare epochs first.",
         "- A difference between methods is real only when it exceeds the spread (the ± values) of both.", ""]
    L += ["## References", "", "| model | quantizer | n | test acc % | val acc % | size % INT8 |", "|---|---|---|---|---|---|",
          f"| FP32 | — | 1 | {fp32['test_acc']*100:.2f} | {fp32['val_acc']*100:.2f} | 400 |"]
    for q, s in refs.items():
        if s is None: continue
        sd = lambda k: "" if s[f"{k}_std"] is None else f" ± {s[f'{k}_std']*100:.2f}"
        L.append(f"| INT8 (W8A8) | {q} | {s['n']} | {s['test_acc_mean']*100:.2f}{sd('test_acc')} | {s['acc_mean']*100:.2f}{sd('acc')} | 100 |")
    L.append("")
    for q in dict.fromkeys(s["quantizer"] for s in summary):
        size = [dict(s, budget_tag=budget_label(s["budget_tag"])) for s in summary if s["quantizer"] == q and "-bo" not in s["budget_tag"]]
        bops = [dict(s, budget_tag=budget_label(s["budget_tag"])) for s in summary if s["quantizer"] == q and "-bo" in s["budget_tag"]]
        L += [f"## Size budgets (A8), quantizer `{q}`", "", summary_table(size, quantizer=False, extra=("avg_bits",)), ""]
        if bops: L += [f"## BOPs budgets, quantizer `{q}`", "", summary_table(bops, quantizer=False, extra=("bops_frac", "avg_bits")), ""]
    fails = [f for s in sweeps for f in s.failures]
    L += ["## Failures", "", *(f"- {f['name']}: {f['error']}" for f in fails)] if fails else ["No run failed."]
    L += ["", f"Plots: `pareto_{mode}.html` (accuracy vs size and vs energy, per quantizer; written by the benchmark, not committed; `nbs/12b_results.ipynb` draws the same plots). Raw rows: `pareto_{mode}.json`."]
    atomic_write(path, "\n".join(L) + "\n")


def write_html(path, mode, summary, refs):
    import holoviews as hv
    from bokeh.resources import INLINE
    hv.extension("bokeh", logo=False)
    plots = []
    for q in dict.fromkeys(s["quantizer"] for s in summary):
        size = [s for s in summary if s["quantizer"] == q and "-bo" not in s["budget_tag"]]
        bops = [s for s in summary if s["quantizer"] == q and "-bo" in s["budget_tag"]]
        r = refs.get(q)
        ref = {"INT8": (1.0, r["test_acc_mean"])} if r else None
        plots += [pareto_plot(size, "size_frac", title=f"{q}: test accuracy vs weight size", ref=ref),
                  pareto_plot(size, "energy_frac", title=f"{q}: test accuracy vs simulated energy", ref=ref)]
        if bops and any(s.get("bops_frac_mean") is not None for s in bops):
            plots.append(pareto_plot(bops, "bops_frac", title=f"{q}: test accuracy vs BOPs"))
    layout = hv.Layout(plots).cols(2).opts(title=f"sigmaquant-lab Pareto benchmark ({mode}); mean ± std over seeds")
    hv.save(layout, str(path), resources=INLINE, title=f"Pareto benchmark ({mode})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="digits + DigitsCNN on CPU (minutes) instead of CIFAR-10 + ResNet-20 on a GPU")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: every registered one)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--quantizers", default="minmax,lsq", help="quantizer modes, one table each")
    p.add_argument("--max-acc-drop", type=float, default=0.01, help="accuracy budget of every run (drop vs INT8, 0-1)")
    p.add_argument("--backend", choices=["ray", "local"], default="ray", help="ray tasks or one run after another")
    p.add_argument("--address", default=None, help="an existing Ray cluster")
    p.add_argument("--device", default=None, help="device of every run (default: cuda for full, cpu for quick)")
    p.add_argument("--runs", default=None, help="folder for the run records (default: <settings cache>/bench-runs/<mode>)")
    p.add_argument("--out", default=str(ROOT/"benchmarks"/"results"), help="folder for pareto_<mode>.json/.md/.html")
    p.add_argument("--plan", action="store_true", help="build and check every config and print the grid; run nothing")
    p.add_argument("--search-first-last", action="store_true", help="search the first conv and last FC too (default: both at 8 bits, the field's convention)")
    p.add_argument("--budget-s", type=float, default=None, help="time-boxed slices (benchmarks/slices.py): run what fits in N seconds, "
                   "keep every finished run in --results, continue from there next time")
    p.add_argument("--tiny", action="store_true", help="with --budget-s: the CPU twin (a few hundred CIFAR-10 images)")
    p.add_argument("--protocol", default=None, help="with --budget-s: the slices protocol (gpu, tiny, cpu-subset: the pretrained ResNet-20 on a "
                   "10,000-image subset on this CPU, cpu-subset-tiny: its twin; see benchmarks/slices.py)")
    p.add_argument("--results", default=None, help="with --budget-s: the results folder (default: slices/<gpu|tiny>, git-ignored)")
    a = p.parse_args(argv)
    if a.budget_s is not None or a.tiny or a.protocol:
        import slices
        return slices.main(["--budget-s", str(a.budget_s if a.budget_s is not None else 0), *(["--tiny"] if a.tiny else []),
                            *(["--protocol", a.protocol] if a.protocol else []),
                            *(["--results", a.results] if a.results else []), *(["--device", a.device] if a.device else [])])
    mode = "quick" if a.quick else "full"
    proto = PROTOCOLS[mode]
    if a.search_first_last: proto = dict(proto, sweep=dict(proto["sweep"], pin_first_last=None))
    st = load_settings(ROOT/"settings.ini")
    a.methods = tuple(a.methods.split(",")) if a.methods else default_methods()
    a.seeds = tuple(int(s) for s in a.seeds.split(","))
    quantizers = tuple(a.quantizers.split(","))
    device = a.device or proto["device"]
    runs_root = Path(a.runs) if a.runs else st.path_("data", "cache")/"bench-runs"/mode
    def sweep_cfg(q, weights=None):
        return SweepConfig(methods=a.methods, budgets=tuple(budgets(a.max_acc_drop)), seeds=a.seeds, data=proto["data"], limit=proto["limit"],
                           model=proto["model"], weights=weights, quantizer=q, device=device, out=str(runs_root/q), backend=a.backend,
                           num_cpus=proto["num_cpus"], cpus_per_task=proto["cpus_per_task"], gpus_per_task=proto["gpus_per_task"],
                           settings=str(ROOT/"settings.ini"),
                           **{**proto["sweep"], "method_overrides": {m: o for m, o in proto["sweep"]["method_overrides"].items() if m in a.methods}})
    for q in quantizers:                               # every config of every sweep is checked before anything trains
        specs = plan_sweep(sweep_cfg(q), st)
    if a.plan:
        print(f"{mode}: {len(quantizers)} quantizers x {len(specs)} runs = {len(quantizers)*len(specs)} runs; methods {', '.join(a.methods)}")
        for s in specs: print(f"  {s.name:<40} {type(s.cfg).__name__:<18} epochs-matched-to {s.match or '-'}")
        return 0
    env = environment()
    t0 = time.perf_counter()
    data = get_data(proto["data"], st, progress=True)
    weights, fp32 = train_fp32(data, proto["model"], proto["fp32"], device, st.path_("data", "cache"))
    print(f"FP32 {proto['model']} on {data.name}: test {fp32['test_acc']:.2%}, val {fp32['val_acc']:.2%} ({weights.name})", file=sys.stderr)
    del data
    sweeps, rows = [], []
    for q in quantizers:
        res = run_sweep(sweep_cfg(q, str(weights)), address=a.address, progress=True, settings=st)
        sweeps.append(res); rows += res.rows
    wall = time.perf_counter() - t0
    summary, refs = summarize(rows), references(rows)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out/f"pareto_{mode}.json", dict(mode=mode, protocol=proto, methods=a.methods, seeds=a.seeds, quantizers=quantizers,
                                                     max_acc_drop=a.max_acc_drop, bops_budgets=HAS_BOPS, fp32=fp32, int8=refs,
                                                     environment=env, backend=a.backend, wall_s=wall, runs=str(runs_root),
                                                     failures=[f for s in sweeps for f in s.failures], summary=summary, rows=rows))
    write_markdown(out/f"pareto_{mode}.md", mode, proto, fp32, refs, summary, env, wall, len(rows), a, sweeps)
    write_html(out/f"pareto_{mode}.html", mode, summary, refs)
    print((out/f"pareto_{mode}.md").read_text())
    return 1 if any(s.failures for s in sweeps) else 0


if __name__ == "__main__":
    from sigmaquant_lab.core import SQError
    try: sys.exit(main())
    except SQError as e: print(f"pareto_cifar10: error: {e}", file=sys.stderr); sys.exit(2)
