"""QAT quality guard (issue 15): uniform maps on a fixed CIFAR-10 subset, before and after a short QAT.

CIFAR-10 with a fixed class-balanced 10,000-image training subset, ResNet-20, the project's FP32 recipe
(cached in settings.ini [data] cache), then uniform W8A8, W4A8, W3A8, W2A8, W4A4, W2A2 — first conv and
last FC at 8 bits (weights and input activations), the field convention — each quantized from the FP32
model, calibrated, measured (test accuracy before any QAT), trained for `--qat-epochs` epochs with the
recipe in settings.ini ([quant], [train]) and measured again. Also the FP32 and QAT epoch times.
Every finished map is written at once to the JSON (a killed run keeps what it finished).

Targets (this 2-core CPU, ≤ 40 minutes with the FP32 model cached): W2A8 within 1.5 pt of FP32 after
2 QAT epochs; W3A8 and W4A8 within 0.8 pt; W8A8 within 0.3 pt; QAT epoch ≤ 1.5x the FP32 epoch.

    python benchmarks/qat_cifar_subset.py                      # CIFAR-10 subset (needs cifar10-jpg.zip)
    python benchmarks/qat_cifar_subset.py --data digits --maps W8A8,W2A8 --out /tmp/x   # the CI-sized twin
    python benchmarks/qat_cifar_subset.py --set step_init=minmax --name minmax-init      # compare a recipe change
"""
import argparse, copy, json, os, platform, sys, time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sigmaquant_lab.core import load_settings, seed_everything, atomic_write
from sigmaquant_lab.data import get_data
from sigmaquant_lab.quant import quantize_, quant_layers, QuantConfig
from sigmaquant_lab.search import SearchConfig
from sigmaquant_lab.train import float_model, train_, evaluate, calibrate_, TrainConfig

MAPS = ("W8A8", "W4A8", "W3A8", "W2A8", "W4A4", "W2A2")
TARGETS_PT = {"W8A8": 0.3, "W4A8": 0.8, "W3A8": 0.8, "W2A8": 1.5}   # max drop vs FP32 after QAT, points


def parse_map(s):
    "'W2A8' -> (2, 8)."
    s = s.strip().upper()
    if not (s.startswith("W") and "A" in s): raise SystemExit(f"map {s!r} is not of the form W<bits>A<bits>, e.g. W2A8")
    w, a = s[1:].split("A")
    return int(w), int(a)


def quantized(fm, w, a, quant:QuantConfig, pin:int|None):
    "A copy of the float model at uniform W{w}A{a}, first and last layer at `pin` bits (weights and activations)."
    m = copy.deepcopy(fm)
    names = [n for n, x in m.named_modules() if isinstance(x, (torch.nn.Conv2d, torch.nn.Linear))]
    cfg = {n: replace(quant, w_bits=w, a_bits=a) for n in names}
    if pin is not None: cfg[names[0]] = cfg[names[-1]] = replace(quant, w_bits=max(w, pin), a_bits=max(a, pin))
    return quantize_(m, cfg)


def zero_frac(m, bits):
    "Fraction of the integer weights that are zero in the layers at `bits`."
    z = n = 0
    for l in quant_layers(m).values():
        if l.w_bits == bits: q = l.int_weight()[0]; z += int((q == 0).sum()); n += q.numel()
    return z / max(n, 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="cifar10"); ap.add_argument("--model", default=None)
    ap.add_argument("--n-train", type=int, default=10000, help="class-balanced training subset (0 = all)")
    ap.add_argument("--maps", default=",".join(MAPS)); ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--fp-epochs", type=int, default=None, help="default: settings.ini [train] fp_epochs")
    ap.add_argument("--pin", type=int, default=8, help="first/last layer width (0 = search them too)")
    ap.add_argument("--set", action="append", default=[], help="QuantConfig/TrainConfig field=value (recipe experiments)")
    ap.add_argument("--threads", type=int, default=None); ap.add_argument("--name", default="qat_cifar_subset")
    ap.add_argument("--out", default=str(ROOT/"benchmarks"/"results"))
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    st = load_settings(); base = SearchConfig.from_settings(st)
    quant, train = base.quant, base.train
    for kv in a.set:
        k, v = kv.split("=", 1)
        for obj in ("quant", "train"):
            o = locals()[obj]
            if hasattr(o, k):
                t = type(getattr(o, k)); v2 = (v.lower() in ("1", "true", "yes")) if t is bool else (t(v) if getattr(o, k) is not None else float(v))
                if obj == "quant": quant = replace(quant, **{k: v2})
                else: train = replace(train, **{k: v2})
                break
        else: raise SystemExit(f"--set {k}: not a QuantConfig or TrainConfig field")
    data = get_data(a.data, st)
    if a.n_train: data = data.subset(a.n_train)
    model_name = a.model or ("digits_cnn" if data.name == "digits" else "resnet20")
    fp_epochs = st.int("train", "fp_epochs") if a.fp_epochs is None else a.fp_epochs
    t0 = time.perf_counter()
    fm = float_model(data, model_name, epochs=fp_epochs, lr=st.float("train", "fp_lr"), batch_size=base.batch_size,
                     seed=base.seed, device="cpu", cache_dir=st.path_("data", "cache"), progress=True)
    fp_fetch_s = time.perf_counter() - t0
    train_loader = data.loader("train", batch_size=base.batch_size, seed=base.seed)
    test_loader = data.loader("test", batch_size=256)
    fp_acc = evaluate(fm, test_loader)
    # one FP32 epoch with the same loader, for the QAT/FP32 time ratio
    seed_everything(base.seed); tmp = copy.deepcopy(fm)
    fp_epoch_s = train_(tmp, train_loader, replace(train, epochs=1))["wall_s"]; del tmp
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    res = dict(machine=dict(platform=platform.platform(), cpus=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__),
               data=data.name, n_train=len(data.y_train), n_test=len(data.y_test), model=model_name, fp_epochs=fp_epochs,
               qat_epochs=a.qat_epochs, pin_first_last=a.pin or None, quant=quant.__dict__ | {}, train=train.__dict__ | {},
               fp32_test_acc=fp_acc, fp32_epoch_s=fp_epoch_s, fp32_fetch_s=fp_fetch_s, targets_pt=TARGETS_PT, maps=[])
    def save():
        atomic_write(out/f"{a.name}.json", json.dumps(res, indent=1, default=str).encode())
        atomic_write(out/f"{a.name}.md", table(res).encode())
    save()
    for s in a.maps.split(","):
        w, act = parse_map(s)
        seed_everything(base.seed)
        m = quantized(fm, w, act, quant, a.pin or None)
        calibrate_(m, train_loader, base.calib_batches)
        before = evaluate(m, test_loader); zeros = zero_frac(m, w)
        rep = train_(m, train_loader, replace(train, epochs=a.qat_epochs), progress=True, desc=f"{s} qat")
        after = evaluate(m, test_loader)
        row = dict(map=s.upper(), w_bits=w, a_bits=act, acc_before_qat=before, acc_after_qat=after,
                   drop_pt=100 * (fp_acc - after), zero_frac_before=zeros, qat_epoch_s=rep["wall_s"] / max(a.qat_epochs, 1))
        t = TARGETS_PT.get(row["map"]); row["target_pt"] = t; row["met"] = None if t is None else row["drop_pt"] <= t
        res["maps"].append(row); save()
        print(f"{row['map']}: before QAT {100*before:.2f} %, after {100*after:.2f} % (FP32 {100*fp_acc:.2f} %), "
              f"{row['qat_epoch_s']:.1f} s/epoch", flush=True)
    print(table(res))
    return res


def table(res):
    q, t = res["quant"], res["train"]
    lines = [f"# QAT guard: {res['model']} on {res['data']} ({res['n_train']} training / {res['n_test']} test images)", "",
             f"FP32 {100*res['fp32_test_acc']:.2f} % test ({res['fp_epochs']} epochs, cached); QAT {res['qat_epochs']} epochs per map from the FP32 model; "
             f"first conv and last FC at {res['pin_first_last'] or 'searched'} bits.",
             f"Quantizer {q['quantizer']} (step init {q.get('step_init', '?')}); recipe {t['optimizer']} lr {t['lr']} {t['schedule']}, "
             f"wd {t['weight_decay']}, label smoothing {t.get('label_smoothing')}.",
             f"Machine: {res['machine']}", "",
             "| map | before QAT | after QAT | drop vs FP32 | target | zero weights before QAT | QAT s/epoch (FP32 {:.1f}) |".format(res["fp32_epoch_s"]),
             "|---|---|---|---|---|---|---|"]
    for r in res["maps"]:
        tgt = "—" if r["target_pt"] is None else f"≤ {r['target_pt']} pt {'✓' if r['met'] else '✗'}"
        lines.append(f"| {r['map']} | {100*r['acc_before_qat']:.2f} % | {100*r['acc_after_qat']:.2f} % | {r['drop_pt']:+.2f} pt | {tgt} | "
                     f"{100*r['zero_frac_before']:.1f} % | {r['qat_epoch_s']:.1f} ({r['qat_epoch_s']/res['fp32_epoch_s']:.2f}×) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
