"""The table (and plot) of a slices results folder, regenerated from its committed JSON records (issue 23).

Reads every finished record of the folder's protocol (a record of another protocol is refused, as the planner
does), and writes one markdown table: per budget and method, test accuracy mean ± sample std over the seeds
finished so far (n), size, BOPs, simulated shift-add energy and latency (fractions of INT8), QAT epochs after the
INT8 reference and wall time; then the uniform ladder and the FP32 fine-tune. With --html, also the plot (accuracy
against size and against BOPs, one marker per method, the ladder as a line; Bokeh inlined, git-ignored).

    python benchmarks/cifar_subset_table.py --results benchmarks/results/cifar_subset
"""
import argparse, json, statistics, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT/"benchmarks"))
from sigmaquant_lab.core import SQError, atomic_write
from slices import PROTOCOLS, Slices, make_plan, budget_tag, W2A2
from sigmaquant_lab.search import search_epochs

METHODS = ("sigmaquant", "uniform", "hawq", "amed", "diffmp", "random")


def budget_name(kind, v):
    return f"size {v:.1%} of INT8 (A8)" if kind == "size_frac" else f"BOPs {v / W2A2:g}x W2A2 ({v:.2%} of INT8)"


def rows_of(root):
    "(protocol name, protocol, fp32 facts, [row per finished run]) of a results folder."
    pf = Path(root)/"protocol.json"
    if not pf.exists(): raise SQError(f"{root} holds no slices results (no protocol.json)", "pass the --results folder of pareto_cifar10.py --budget-s")
    saved = json.loads(pf.read_text())
    name = saved.get("mode")
    if name not in PROTOCOLS: raise SQError(f"{root} holds protocol {name!r}, unknown here", f"use one of {', '.join(PROTOCOLS)}")
    sl = Slices(root, PROTOCOLS[name], name)
    if saved.get("digest") != sl.digest:
        raise SQError(f"results folder {root} holds another protocol or code version (digest {saved.get('digest')}, this one {sl.digest})",
                      "check out the code that wrote it")
    out = []
    for it in make_plan(sl.proto):
        if it.key == "fp32": continue
        d = sl.runs/it.key
        if not (d/"result.json").exists(): continue
        r = sl.done(it.key)                      # refuses a record of another protocol
        c = r["costs"]
        out.append(dict(key=it.key, method=it.method, seed=it.seed, w=it.w, a=it.a, status=r["status"],
                        cell=None if it.budget is None else (("bops_frac", it.budget["bops_frac"]) if "bops_frac" in it.budget else ("size_frac", it.budget["size_frac"])),
                        test_acc=r["test_acc"], val_acc=r["acc"], size_frac=c["size_frac"], bops_frac=c["bops_frac"], energy_frac=c["energy_frac"],
                        latency_frac=c["latency_frac"], epochs=search_epochs(r), wall_s=r["wall_s"], int8_test=r["reference"]["acc_test"],
                        fp32_test=r["reference"]["fp32_acc_test"]))
    fp = json.loads((sl.root/"fp32.json").read_text()) if (sl.root/"fp32.json").exists() else None
    return name, sl.proto, fp, out


def _ms(xs, k=100, d=2):
    if not xs: return "—"
    m = statistics.mean(xs) * k
    return f"{m:.{d}f}" if len(xs) < 2 else f"{m:.{d}f} ± {statistics.stdev(xs) * k:.{d}f}"


def table(name, proto, fp, rows) -> str:
    L = [f"# CIFAR-10 subset from the pretrained ResNet-20: protocol `{name}`", "",
         "Regenerated from the JSON records by `benchmarks/cifar_subset_table.py`; mean ± sample std over the seeds finished (n). "
         "Test accuracy on the test images not used for validation (cpu-subset: 5,000 of 10,000); size, BOPs, energy (simulated shift-add MAC array) and "
         "latency as fractions of INT8; epochs: QAT epochs after the INT8 reference (every peer gets SigmaQuant's in its cell); "
         "wall: seconds per run on this CPU (1 thread). A difference is real only beyond the spread of seeds (~0.7 pt).", ""]
    if fp:
        eps = ", ".join(f"epoch {e['epoch']} (lr {e['lr']:g}): {e['test_acc']:.2%}" for e in fp["epochs"])
        L += [f"FP32: the pretrained model as loaded {fp['loaded']['test_acc']:.2%} test ({fp['loaded']['val_acc']:.2%} val); "
              f"fine-tuned on {fp['train_images']:,} JPEG training images: {eps}; {fp['wall_s']:.0f} s.", ""]
    int8 = [r["int8_test"] for r in {r["seed"]: r for r in rows}.values()]
    if int8: L += [f"INT8 reference (W8A8, calibrated, {proto['qat']['int8_epochs']} QAT epochs): {_ms(int8)} % test over seeds.", ""]
    cols = "| budget | method | n | test acc % | size % | BOPs % | energy % | latency % | epochs | wall s | status |"
    L += ["## Matched budgets", "", cols, "|" + "---|" * 11]
    for kind, v in proto["main_budgets"] + tuple(proto["rest_budgets"]):
        for m in METHODS:
            rs = [r for r in rows if r["cell"] == (kind, v) and r["method"] == m]
            if not rs: continue
            g = lambda k: [r[k] for r in rs]
            st = ", ".join(sorted(set(g("status"))))
            L.append(f"| {budget_name(kind, v)} | {m} | {len(rs)} | {_ms(g('test_acc'))} | {_ms(g('size_frac'), d=1)} | {_ms(g('bops_frac'), d=1)} | "
                     f"{_ms(g('energy_frac'), d=1)} | {_ms(g('latency_frac'), d=1)} | {'/'.join(map(str, g('epochs')))} | "
                     f"{statistics.mean(g('wall_s')):.0f} | {st} |")
    L += ["", "## Uniform ladder", "", "| W/A | n | test acc % | size % | BOPs % | epochs |", "|---|---|---|---|---|---|"]
    for w, a in proto["ladder"]:
        rs = [r for r in rows if r["w"] == w and r["a"] == a]
        if rs: L.append(f"| W{w}A{a} | {len(rs)} | {_ms([r['test_acc'] for r in rs])} | {_ms([r['size_frac'] for r in rs], d=1)} | "
                        f"{_ms([r['bops_frac'] for r in rs], d=1)} | {'/'.join(str(r['epochs']) for r in rs)} |")
    n_all = len([it for it in make_plan(proto) if it.key != "fp32"])
    L += ["", f"{len(rows)} of {n_all} planned runs finished."]
    return "\n".join(L) + "\n"


def plot(rows, path):
    import holoviews as hv
    from bokeh.resources import CDN     # a small file (BokehJS from its CDN when viewed)
    hv.extension("bokeh", logo=False)
    lad = sorted([r for r in rows if r["w"] is not None], key=lambda r: r["size_frac"])
    panes = []
    for x in ("size_frac", "bops_frac"):
        ov = hv.Curve([(r[x], r["test_acc"]) for r in sorted(lad, key=lambda r: r[x])], x, "test_acc", label="uniform ladder")
        for m in METHODS:
            pts = [(r[x], r["test_acc"]) for r in rows if r["method"] == m and r["cell"] is not None]
            if pts: ov = ov * hv.Scatter(pts, x, "test_acc", label=m).opts(size=8)
        panes.append(ov.opts(title=f"test accuracy vs {x}", width=520, height=380, legend_position="bottom_right"))
    hv.save(hv.Layout(panes).cols(2), str(path), resources=CDN)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=str(ROOT/"benchmarks"/"results"/"cifar_subset"))
    p.add_argument("--out", default=None, help="markdown file (default: <results>.md)")
    p.add_argument("--html", action="store_true", help="also write the plot beside it (.html)")
    a = p.parse_args(argv)
    name, proto, fp, rows = rows_of(a.results)
    out = Path(a.out) if a.out else Path(str(Path(a.results).resolve()) + ".md")
    atomic_write(out, table(name, proto, fp, rows))
    if a.html: plot(rows, out.with_suffix(".html"))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    try: sys.exit(main())
    except SQError as e: print(f"cifar_subset_table: error: {e}", file=sys.stderr); sys.exit(2)
