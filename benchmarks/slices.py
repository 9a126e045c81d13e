"""CIFAR-10 evidence in time-boxed, resumable slices (issue 14): the planner behind `pareto_cifar10.py --budget-s N`.

A GPU is lent by chance and then for minutes, so every minute must end in finished, kept results. The planner
orders the work by value, estimates each item from measured epoch times, says up front what fits in the time
budget, runs it one item at a time (and more while the estimates, rescaled by every finished run, still fit) and writes every finished run at once into one results folder (plus a
`records.tar.gz` of the small JSON records, for a machine that returns only a few files). The next call — carry
the folder there and back — continues from it: finished runs are reused, a run killed mid-way resumes from its
last completed step (its partial run folder), nothing is half-counted.

Order of value:
  (a) the FP32 model (trained once; reused from the folder with its recipe and digest),
  (b) the LSQ uniform ladder W8A8, W4A8, W2A8, W4A4, W3A3, W2A2 and the asymmetric pairs W2A3, W3A2, W2A4, W4A2,
  (c) SigmaQuant vs its peers at 30 % and 37.5 % of INT8 size and 1.5x / 2x the BOPs of W2A2, seeds 0, 1, then 2
      (each peer gets the QAT epochs SigmaQuant spent at the same budget and seed),
  (d) the rest of the grid (other budgets, the other peers, the ladder's other seeds).

The `cpu-subset` protocol (issue 23) is the CPU evidence from a well-trained model: the pretrained ResNet-20 of
`../shared/data/pretrained/` (91.78 % on the original CIFAR-10, about 81 % on the JPEG test split as loaded), with
its own preprocessing (ImageNet mean/std in torchvision's units), fine-tuned in float once on the whole JPEG training
split (cached in the results folder, git-ignored), then QAT on a fixed class-stratified 10,000-image training
subset; validation is 5,000 class-stratified images of the test split (the model has seen every training image:
validation carved from training would be biased, ~89 % there against ~81 % on test) and accuracy is reported on
the other 5,000. First conv and last FC at 8 bits for every method; the settings.ini QAT recipe.
Sizing (measured here: ResNet-20 trains at ~220 images/s on 2 threads; LSQ QAT is slower, ~100 s per 10,000-image
epoch on 1 thread; evaluating 5,000 + 5,000 images ~14 s): the INT8 reference is calibrated without QAT
(int8_epochs 0: the pretrained W8A8 is within a few tenths of FP32), SigmaQuant gets one Phase-1 round of one epoch
and at most two one-epoch Phase-2 steps (<= 3 QAT epochs), every peer the epochs SigmaQuant spent in its cell, the
ladder 3. One run is then ~3 x 100 s + ~5 evaluations x 14 s ~ 370-400 s on 1 thread, so the main grid — 4 budgets
x 6 methods x 2 seeds = 48 runs plus the 9-rung ladder — is ~57 x 390 s ~ 6.2 h on 1 thread, ~4 h on 2, plus the
fine-tune (2 epochs of 50,000 images): two sessions. Measured in the first session (1 thread, beside tests and
two other engineers' jobs on the 2 cores): the fine-tune took 634 + 501 s and brought the test half from 81.04 % (as
loaded) to 85.62 % (epoch 1, lr 0.01) and 86.58 % (epoch 2, lr 0.001; val 87.86 %) — the second epoch still adds a
point, a third was not measured; a ladder run took 230-415 s (median ~375 s), so the 57 runs of the main grid are ~6 h
on 1 thread. The INT8 reference (calibrated) scores 86.68 %; three QAT epochs of the settings recipe on the subset
bring even W8A8 down to 84.96 % (84.80 % at lr 0.002), so every method here carries that loss. HAWQ's Hessian uses 20 probes (its trace
costs about one epoch), AMED and DiffMP one fine-tune epoch of their budget. Seed 2 comes after.

    python benchmarks/pareto_cifar10.py --protocol cpu-subset --budget-s 7200 --results benchmarks/results/cifar_subset

Not done here (noted for the GPU session): several runs at once on the one GPU; torch.compile and channels_last are
not measured yet. Data is decoded once and held on the device by the loaders; bf16 autocast is on for CUDA.

    python benchmarks/pareto_cifar10.py --budget-s 540 --results slices        # on the GPU machine
    python benchmarks/pareto_cifar10.py --tiny --budget-s 600 --results /tmp/s  # the CPU twin (CI)
    python benchmarks/pareto_cifar10.py --protocol cpu-subset-tiny --budget-s 600 --results /tmp/c   # cpu-subset's twin
"""
import hashlib, io, json, os, shutil, sys, tarfile, time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import sigmaquant_lab
from sigmaquant_lab.core import SQError, Budget, load_settings, resolve_device, seed_everything, atomic_write, atomic_write_json, to_jsonable
from sigmaquant_lab.data import get_data, data_roots, file_sha256
from sigmaquant_lab.models import get_model, load_weights_
from sigmaquant_lab.quant import QuantConfig, quantize_
from sigmaquant_lab.search import search, config_class_for, search_epochs
from sigmaquant_lab.train import TrainConfig, train_, evaluate
from sigmaquant_lab.uniform import UniformConfig
import sigmaquant_lab.methods   # every method, registered once

W2A2 = 4 / 64                         # BOPs of uniform W2A2 as a fraction of INT8
LADDER = ((8, 8), (4, 8), (2, 8), (4, 4), (3, 3), (2, 2), (2, 3), (3, 2), (2, 4), (4, 2))
PROTOCOLS = {
    "gpu": dict(data="cifar10", model="resnet20", limit=None, device="auto", quantizer="lsq", max_acc_drop=0.01, pin_first_last=8,
                fp32=dict(epochs=60, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine", batch_size=256, seed=0),
                qat=dict(int8_epochs=2, e1=4, e2=2, rounds1=3, max_steps=20, batch_size=256, epochs=8),
                ladder=LADDER, main_budgets=(("size_frac", 0.3), ("size_frac", 0.375), ("bops_frac", 1.5 * W2A2), ("bops_frac", 2 * W2A2)),
                rest_budgets=(("size_frac", 0.25), ("size_frac", 0.5), ("size_frac", 0.75), ("bops_frac", 4 * W2A2)),
                peers=("uniform", "hawq", "amed"), rest_methods=("random", "diffmp"), seeds=(0, 1, 2)),
    # the CPU twin: same planner, slicing and resume path; a few hundred CIFAR-10 images, a few batches per epoch
    "tiny": dict(data="cifar10", model="resnet20", limit=256, device="cpu", quantizer="lsq", max_acc_drop=0.01, pin_first_last=8,
                 fp32=dict(epochs=1, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="onecycle", batch_size=64, seed=0),
                 qat=dict(int8_epochs=1, e1=1, e2=1, rounds1=1, max_steps=1, batch_size=64, epochs=1),
                 ladder=((8, 8), (2, 8), (2, 2)), main_budgets=(("size_frac", 0.3), ("bops_frac", 2 * W2A2)),
                 rest_budgets=(), peers=("uniform",), rest_methods=(), seeds=(0, 1)),
}
# issue 23: from a pretrained model, on the CPU (see the module docstring for the sizing)
PRETRAINED_RESNET20 = dict(file="pretrained/resnet20-12fca82f.th", sha256="12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8")
PROTOCOLS["cpu-subset"] = dict(
    data="cifar10", model="resnet20", limit=None, device="cpu", quantizer="lsq", max_acc_drop=0.01, pin_first_last=8,
    pretrained=PRETRAINED_RESNET20, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),   # its training preprocessing (torchvision units)
    val_from="test", val_frac=0.5, qat_subset=10000, eval_limit=None, ft_limit=None,
    # float fine-tune on the whole JPEG training split: one epoch per learning rate (constant within it, so every epoch ends in a usable model)
    fp32=dict(kind="finetune", lrs=(0.01, 0.001), momentum=0.9, weight_decay=1e-4, label_smoothing=0.0, batch_size=128, seed=0),
    qat=dict(int8_epochs=0, e1=1, e2=1, rounds1=1, max_steps=2, batch_size=128, epochs=3),
    overrides=dict(hawq=dict(probes=20), amed=dict(finetune_epochs=1), diffmp=dict(finetune_epochs=1)),
    ladder=((8, 8), (4, 8), (3, 8), (2, 8), (4, 4), (3, 3), (2, 2), (2, 4), (4, 2)),
    main_budgets=(("size_frac", 0.3), ("size_frac", 0.375), ("bops_frac", 1.5 * W2A2), ("bops_frac", 2 * W2A2)),
    rest_budgets=(), peers=("uniform", "hawq", "amed", "diffmp", "random"), rest_methods=(), seeds=(0, 1, 2))
# its CPU twin (tests): the same path (pretrained file, fine-tune, subset, validation from test, every method) on a few hundred images
PROTOCOLS["cpu-subset-tiny"] = dict(PROTOCOLS["cpu-subset"], qat_subset=160, eval_limit=100, ft_limit=128,
    fp32=dict(PROTOCOLS["cpu-subset"]["fp32"], lrs=(0.001,), batch_size=64),
    qat=dict(int8_epochs=0, e1=1, e2=1, rounds1=1, max_steps=1, batch_size=64, epochs=1),
    overrides=dict(hawq=dict(probes=2, hessian_samples=32), amed=dict(finetune_epochs=1), diffmp=dict(finetune_epochs=1)),
    ladder=((8, 8), (2, 8)), main_budgets=(("size_frac", 0.3),), seeds=(0,))


def protocol_digest(proto:dict) -> str:
    "What every record of a results folder must share: the protocol and the library version."
    return hashlib.sha256(json.dumps(dict(proto, version=sigmaquant_lab.__version__), sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Item:
    "One unit of work: a run (method, budget, seed) or the FP32 model; `match` names the run whose epochs it gets."
    key:str; group:str; method:str; budget:dict|None=None; seed:int=0; w:int|None=None; a:int|None=None; match:str|None=None

    def epochs(self, q:dict) -> int:
        "QAT epochs after the INT8 reference this item is planned to spend (SigmaQuant: Phase 1 plus a few steps)."
        if self.method == "sigmaquant": return q["e1"] * q["rounds1"] + q["e2"] * min(q["max_steps"], 3)
        return q["epochs"]


def budget_tag(kind, v): return f"{'sz' if kind == 'size_frac' else 'bo'}{v:g}"


def make_plan(proto:dict) -> list[Item]:
    "Every item of the protocol, in order of value."
    items = [Item("fp32", "a", "fp32")]
    items += [Item(f"uniform-W{w}A{a}-s0", "b", "uniform", None, 0, w, a) for w, a in proto["ladder"]]
    def grid(budgets, methods, seeds, group, peers_match=True):
        out = []
        for s in seeds:
            for kind, v in budgets:
                b = {kind: v, "max_acc_drop": proto["max_acc_drop"], "size_frac": v if kind == "size_frac" else 1.0}
                sq = f"sigmaquant-{budget_tag(kind, v)}-s{s}"
                if "sigmaquant" in methods: out.append(Item(sq, group, "sigmaquant", b, s))
                out += [Item(f"{m}-{budget_tag(kind, v)}-s{s}", group, m, b, s, match=sq if peers_match else None)
                        for m in methods if m != "sigmaquant"]
        return out
    main = ("sigmaquant", *proto["peers"])
    items += grid(proto["main_budgets"], main, proto["seeds"], "c")
    items += grid(proto["rest_budgets"], main + tuple(proto["rest_methods"]), proto["seeds"], "d")
    items += grid(proto["main_budgets"], tuple(proto["rest_methods"]), proto["seeds"], "d")
    items += [Item(f"uniform-W{w}A{a}-s{s}", "d", "uniform", None, s, w, a) for s in proto["seeds"][1:] for w, a in proto["ladder"]]
    return items


class Slices:
    "The results folder of one protocol: FP32 model, run records, index, packed archive."
    def __init__(self, root, proto:dict, name:str):
        self.root, self.proto, self.name = Path(root), proto, name
        self.digest = protocol_digest(proto)
        self.runs = self.root/"runs"

    def open(self):
        "Create the folder, or check that it holds this protocol."
        pf = self.root/"protocol.json"
        if pf.exists():
            try: saved = json.loads(pf.read_text())
            except (OSError, json.JSONDecodeError): raise SQError(f"{pf} is corrupt", "remove the results folder or pass another --results") from None
            if saved.get("digest") != self.digest:
                raise SQError(f"results folder {self.root} holds another protocol or code version (digest {saved.get('digest')}, "
                              f"this one {self.digest})", "pass another --results folder, or remove that one")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_json(pf, dict(digest=self.digest, protocol=self.proto, mode=self.name, version=sigmaquant_lab.__version__))
        self.runs.mkdir(exist_ok=True)
        return self

    def done(self, key:str) -> dict|None:
        "The finished record of `key` (None: not finished); a record of another protocol is refused."
        d = self.runs/key
        if key == "fp32":
            f = self.root/"fp32.json"
            return json.loads(f.read_text()) if f.exists() and (self.root/"fp32.pt").exists() else None
        if not (d/"result.json").exists(): return None
        res, conf = json.loads((d/"result.json").read_text()), json.loads((d/"config.json").read_text())
        if conf.get("protocol") != self.digest:
            raise SQError(f"run record {d} belongs to another protocol (digest {conf.get('protocol')})", "remove it or use another --results folder")
        return res

    def index(self, items, timings) -> dict:
        "What is finished, with each run's figures; written atomically with the packed archive."
        rows = []
        for it in items:
            r = self.done(it.key)
            if r is None or it.key == "fp32": continue
            c = r["costs"]
            rows.append(dict(key=it.key, group=it.group, method=it.method, seed=it.seed, status=r["status"], test_acc=r["test_acc"], acc=r["acc"],
                             size_frac=c.get("size_frac"), bops_frac=c.get("bops_frac"), energy_frac=c.get("energy_frac"), avg_bits=c.get("avg_bits"),
                             epochs=search_epochs(r), wall_s=r["wall_s"], int8_test_acc=r["reference"]["acc_test"], fp32_test_acc=r["reference"]["fp32_acc_test"],
                             budget={k: v for k, v in r["config"]["budget"].items() if v is not None}))
        idx = dict(digest=self.digest, mode=self.name, fp32=self.done("fp32"), runs=rows, timings=timings,
                   pin_first_last=self.proto.get("pin_first_last"), quantizer=self.proto["quantizer"])
        atomic_write_json(self.root/"index.json", idx)
        self.pack()
        return idx

    def pack(self):
        "records.tar.gz: protocol, index, FP32 facts and every finished run's JSON files (small: what a few returned files can hold)."
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for p in [self.root/"protocol.json", self.root/"index.json", self.root/"fp32.json", *sorted(self.runs.glob("*/*.json"))]:
                if p.exists() and not p.parent.name.endswith(".partial"): tar.add(p, arcname=str(p.relative_to(self.root)))
        atomic_write(self.root/"records.tar.gz", buf.getvalue())


def _data(proto, st):
    "(data the searches run on, data the FP32 model trains on)."
    if "qat_subset" not in proto:
        data = get_data(proto["data"], st, progress=False)
        data = data.subset(proto["limit"]) if proto["limit"] else data
        return data, data
    full = get_data(proto["data"], st, progress=False, mean=proto["mean"], std=proto["std"], val_from=proto["val_from"], val_frac=proto["val_frac"])
    nv, nt = proto["eval_limit"] or len(full.y_val), proto["eval_limit"] or len(full.y_test)
    ft = full.subset(proto["ft_limit"], n_val=nv, n_test=nt) if proto["ft_limit"] else full
    return full.subset(proto["qat_subset"], n_val=nv, n_test=nt), ft     # a fixed class-stratified subset (the first images of every class)


def pretrained_path(proto, st) -> Path:
    "The protocol's pretrained checkpoint in the data roots, its sha256 checked."
    want = proto["pretrained"]
    for r in data_roots(st):
        p = r/want["file"]
        if p.is_file():
            if file_sha256(p) != want["sha256"]:
                raise SQError(f"{p} has another sha256 than the protocol's pretrained model ({want['sha256'][:8]})", "restore the file from ../shared/data/pretrained/")
            return p
    raise SQError(f"pretrained model {want['file']} not found in {', '.join(map(str, data_roots(st)))}",
                  "put it there (see ../shared/data/pretrained/README.md) or set [data] extra_roots in settings.ini")


def measure_epoch_s(data, proto, device, n_fp32:int|None=None) -> dict:
    "Seconds per FP32 and per QAT (W4A8 LSQ) epoch, from a few timed batches on this machine."
    r, bs = proto["fp32"], proto["qat"]["batch_size"]
    def per_batch(model, n=3):
        loader = data.loader("train", batch_size=bs, device=device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        it = iter(loader); times = []
        for i in range(n + 1):
            try: xb, yb = next(it)
            except StopIteration: it = iter(loader); xb, yb = next(it)
            if device.type == "cuda": torch.cuda.synchronize()
            t = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(xb), yb); opt.zero_grad(); loss.backward(); opt.step()
            if device.type == "cuda": torch.cuda.synchronize()
            if i: times.append(time.perf_counter() - t)        # the first batch warms up
        return sorted(times)[len(times) // 2]
    torch.manual_seed(0)
    m = get_model(proto["model"], data.num_classes, data.in_shape).to(device)
    fp = per_batch(m)
    q = quantize_(m, QuantConfig(w_bits=4, a_bits=8, quantizer=proto["quantizer"]))
    from sigmaquant_lab.train import calibrate_
    calibrate_(q, data.loader("train", batch_size=bs, device=device), 1)
    qt = per_batch(q)
    nb = -(-len(data.y_train) // bs)
    ev = (len(data.y_val) + len(data.y_test)) / bs * fp / 3          # forward only, both splits
    nf = -(-(n_fp32 or len(data.y_train)) // bs)
    return dict(fp32_epoch_s=fp * nf, qat_epoch_s=qt * nb, eval_s=ev, batches=nb, threads=torch.get_num_threads())


def estimate_s(it:Item, proto:dict, t:dict) -> float:
    "Seconds one item takes: FP32 epochs, or the INT8 reference plus its QAT epochs, each with an evaluation."
    if it.key == "fp32": return (len(proto["fp32"].get("lrs", ())) or proto["fp32"]["epochs"]) * t["fp32_epoch_s"] + t["eval_s"] * (1 + len(proto["fp32"].get("lrs", ())))
    q = proto["qat"]; e = q["int8_epochs"] + it.epochs(q)
    steps = (q["rounds1"] + min(q["max_steps"], 3)) if it.method == "sigmaquant" else 1
    return e * t["qat_epoch_s"] + (steps + 3) * t["eval_s"]


def _sha(sd) -> str: return hashlib.sha256(b"".join(v.cpu().numpy().tobytes() for v in sd.values())).hexdigest()[:16]


def finetune_fp32(data, proto, device, sl:Slices, st, progress=True):
    "The pretrained model, loaded as it was saved and fine-tuned in float once (one epoch per learning rate), kept in the results folder."
    f, ff = sl.done("fp32"), sl.root/"fp32.json"
    m = get_model(proto["model"], data.num_classes, data.in_shape)
    if f is not None:
        sd = torch.load(sl.root/"fp32.pt", map_location="cpu", weights_only=True)
        if _sha(sd) != f["sha"]: raise SQError(f"{sl.root/'fp32.pt'} does not match its digest in fp32.json", "remove both files to fine-tune again")
        m.load_state_dict(sd); return m, f
    rec = json.loads(ff.read_text()) if ff.exists() else None       # the facts committed, the weights (git-ignored) not here: rebuild and check
    r, path = proto["fp32"], pretrained_path(proto, st)
    load_weights_(m, path, name=proto["model"])
    threads = torch.get_num_threads()
    if rec is not None: torch.set_num_threads(rec["threads"])    # the same reduction order: the same weights
    facts = dict(recipe=r, pretrained=proto["pretrained"], device=str(device), threads=torch.get_num_threads(), train_images=len(data.y_train),
                 loaded=dict(val_acc=evaluate(m, data.loader("val")), test_acc=evaluate(m, data.loader("test"))), epochs=[])
    print(f"fine-tune {proto['model']} from {path.name}: as loaded val {facts['loaded']['val_acc']:.2%} test {facts['loaded']['test_acc']:.2%}", flush=True)
    t0 = time.perf_counter(); seed_everything(r["seed"]); m.to(device)
    try:
        for e, lr in enumerate(r["lrs"]):
            te = time.perf_counter()
            train_(m, data.loader("train", batch_size=r["batch_size"], device=device, seed=r["seed"] + e),
                   TrainConfig(epochs=1, lr=lr, momentum=r["momentum"], weight_decay=r["weight_decay"], schedule="constant", label_smoothing=r["label_smoothing"]),
                   progress=progress, desc=f"fine-tune {e + 1}/{len(r['lrs'])}")
            ep = dict(epoch=e + 1, lr=lr, train_s=time.perf_counter() - te, val_acc=evaluate(m, data.loader("val", device=device)),
                      test_acc=evaluate(m, data.loader("test", device=device)))
            facts["epochs"].append(ep)
            print(f"  epoch {e + 1}: val {ep['val_acc']:.2%} test {ep['test_acc']:.2%} ({ep['train_s']:.0f} s)", flush=True)
    finally: torch.set_num_threads(threads)
    m.cpu(); sd = {k: v.detach().cpu() for k, v in m.state_dict().items()}
    facts.update(wall_s=time.perf_counter() - t0, test_acc=facts["epochs"][-1]["test_acc"], val_acc=facts["epochs"][-1]["val_acc"], sha=_sha(sd))
    if rec is not None and rec["sha"] != facts["sha"]:
        raise SQError(f"the fine-tuned model rebuilt here (sha {facts['sha']}) differs from the one the records of {sl.root} were measured on (sha {rec['sha']})",
                      "copy that session's fp32.pt into the folder, or start another --results folder")
    buf = io.BytesIO(); torch.save(sd, buf); atomic_write(sl.root/"fp32.pt", buf.getvalue())
    atomic_write_json(ff, rec or facts)
    return m, rec or facts


def train_fp32(data, proto, device, sl:Slices):
    "The protocol's FP32 model: trained once and kept in the results folder (recipe and digest beside it)."
    f = sl.done("fp32")
    m = get_model(proto["model"], data.num_classes, data.in_shape)
    if f is not None:
        sd = torch.load(sl.root/"fp32.pt", map_location="cpu", weights_only=True)
        if _sha(sd) != f["sha"]:
            raise SQError(f"{sl.root/'fp32.pt'} does not match its digest in fp32.json", "remove both files to retrain the FP32 model")
        m.load_state_dict(sd); return m, f
    r = proto["fp32"]; seed_everything(r["seed"]); m.to(device)
    t0 = time.perf_counter()
    train_(m, data.loader("train", batch_size=r["batch_size"], device=device, seed=r["seed"]),
           TrainConfig(epochs=r["epochs"], lr=r["lr"], momentum=r["momentum"], weight_decay=r["weight_decay"], schedule=r["schedule"]),
           progress=True, desc="fp32")
    m.cpu(); sd = {k: v.detach().cpu() for k, v in m.state_dict().items()}
    buf = io.BytesIO(); torch.save(sd, buf); atomic_write(sl.root/"fp32.pt", buf.getvalue())
    facts = dict(recipe=r, wall_s=time.perf_counter() - t0, device=str(device),
                 test_acc=evaluate(m, data.loader("test")), val_acc=evaluate(m, data.loader("val")),
                 sha=hashlib.sha256(b"".join(v.numpy().tobytes() for v in sd.values())).hexdigest()[:16])
    atomic_write_json(sl.root/"fp32.json", facts)
    return m, facts


def _fit_phases(method:str, kw:dict, st) -> dict:
    "AMED's and DiffMP's phase epochs shrunk to fit the epochs matched to SigmaQuant (a short SigmaQuant run leaves them less)."
    e = kw.get("epochs")
    if e is None or method not in ("amed", "diffmp"): return {}
    get = lambda k: kw[k] if k in kw else st.int(method, k)
    if method == "amed": return dict(finetune_epochs=min(get("finetune_epochs"), max(e - get("step_epochs"), 0)))
    pe = min(get("precision_epochs"), e)
    return dict(precision_epochs=pe, finetune_epochs=min(get("finetune_epochs"), e - pe))


def config_for(it:Item, proto:dict, st, sl:Slices, device:str):
    "The search config of a run item (peers get the epochs of their SigmaQuant run)."
    q, base = proto["qat"], dict(seed=it.seed, device=device)
    quant = dict(quantizer=proto["quantizer"])
    if it.method == "uniform" and it.w is not None:
        bits = tuple(sorted({*UniformConfig.from_settings(st).bits, it.w}))     # a rung's width is a candidate (W3 beside 2,4,6,8)
        c = UniformConfig.from_settings(st, w_bits=it.w, a_bits=it.a, bits=bits, epochs=q["epochs"], budget=Budget(size_frac=1.0, max_acc_drop=proto["max_acc_drop"]), **base)
    else:
        cls = config_class_for(it.method)
        kw = dict(budget=Budget(**it.budget), **base)
        if "epochs" in cls.__dataclass_fields__:
            sq = sl.done(it.match) if it.match else None
            kw["epochs"] = search_epochs(sq) if sq is not None else q["epochs"]
        kw.update({k: v for k, v in proto.get("overrides", {}).get(it.method, {}).items() if k in cls.__dataclass_fields__})
        kw.update(_fit_phases(it.method, kw, st))
        c = cls.from_settings(st, **kw)
        if it.method == "uniform": c = replace(c, w_bits=None)       # the widest W/A pair within the budgets
    over = {k: v for k, v in q.items() if k in c.__dataclass_fields__ and k != "epochs"}
    # the field's convention: first conv and last FC at 8 bits (weights) for every method, stated in the index
    return replace(c, quant=replace(c.quant, **quant), pin_first_last=proto.get("pin_first_last"), **over)


def run_plan(proto:dict, name:str, results, budget_s:float, progress=True, out=sys.stdout) -> dict:
    "Plan, say what fits, run it, keep every finished run; returns the index."
    t_start = time.perf_counter()
    st = load_settings(ROOT/"settings.ini")
    sl = Slices(results, proto, name).open()
    items = make_plan(proto)
    device = resolve_device(proto["device"])
    data, fp_data = _data(proto, st)
    tf = sl.root/"timings.json"
    t = json.loads(tf.read_text()) if tf.exists() else measure_epoch_s(data, proto, device, len(fp_data.y_train))
    atomic_write_json(tf, t)
    todo = [it for it in items if sl.done(it.key) is None]
    # estimates from the measured epoch times, scaled by how long finished runs really took against their estimates
    est = {it.key: estimate_s(it, proto, t) * t.get("scale", 1.0) for it in items}
    if todo and est[todo[0].key] > budget_s:
        raise SQError(f"a time budget of {budget_s:g} s cannot finish even the first item ({todo[0].key}, about {est[todo[0].key]:.0f} s)",
                      f"give --budget-s {est[todo[0].key]:.0f} or more")
    fits, acc = [], 0.0
    for it in todo:
        if acc + est[it.key] > budget_s: break
        fits.append(it); acc += est[it.key]
    print(f"plan ({name}, protocol {sl.digest}): {len(items)} items, {len(items) - len(todo)} already finished in {sl.root}; "
          f"epoch {t['fp32_epoch_s']:.2f} s FP32 / {t['qat_epoch_s']:.2f} s QAT; budget {budget_s:g} s fits {len(fits)} "
          f"({acc:.0f} s estimated), {len(todo) - len(fits)} left for the next call", file=out, flush=True)
    for it in fits: print(f"  {it.group}  {it.key:<34} ~{est[it.key]:6.0f} s", file=out, flush=True)
    model, fp32 = finetune_fp32(fp_data, proto, device, sl, st, progress and sys.stderr.isatty()) if "pretrained" in proto else train_fp32(data, proto, device, sl)
    del fp_data
    src = dict(val_from=proto.get("val_from", "train"), preprocess=dict(data.preprocess, source="given" if "mean" in proto else "data"))
    sl.index(items, t)
    ran = []
    for it in todo:      # the plan's items, then more while the estimates (rescaled by every finished run) say they fit
        if it.key == "fp32" or sl.done(it.key) is not None: continue
        est_now = estimate_s(it, proto, t) * t.get("scale", 1.0)
        if time.perf_counter() - t_start + est_now > budget_s:    # the estimate says it would not finish: leave it whole for next time
            print(f"  stop before {it.key}: it would not finish in the time left (~{est_now:.0f} s)", file=out, flush=True); break
        cfg = config_for(it, proto, st, sl, str(device))
        part = sl.runs/f"{it.key}.partial"
        resume = part.is_dir() and (part/"config.json").exists()
        if part.is_dir() and not resume: shutil.rmtree(part, ignore_errors=True)   # killed before its config was written: nothing to resume
        t0 = time.perf_counter()
        run = lambda resume: search(model, data, cfg, out_dir=sl.runs, name=it.key, resume=resume,
                                    meta=dict(protocol=sl.digest, item=it.key, group=it.group, model_name=proto["model"], **src))
        try: res = run(resume)
        except SQError as e:
            if not resume or ("cannot be resumed" not in str(e) and "other settings" not in str(e)): raise
            shutil.rmtree(part, ignore_errors=True); res = run(False)     # a half-written run that cannot continue: start it again
        ran.append(it.key)
        t.setdefault("ratios", []).append((time.perf_counter() - t0) / estimate_s(it, proto, t))
        t["scale"] = sorted(t["ratios"])[len(t["ratios"]) // 2]; atomic_write_json(tf, t)
        print(f"  done {it.key}: {res.status} test {res.test_acc:.2%} size {res.costs['size_frac']:.1%} BOPs {res.costs['bops_frac']:.1%} "
              f"in {time.perf_counter() - t0:.0f} s (est {est_now:.0f})", file=out, flush=True)
        sl.index(items, t)
    idx = sl.index(items, t)
    idx["ran"] = ran
    return idx


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(description="Time-boxed, resumable CIFAR-10 slices (see benchmarks/slices.py)")
    p.add_argument("--budget-s", type=float, required=True); p.add_argument("--tiny", action="store_true")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default=None, help="gpu (default), tiny (= --tiny), cpu-subset or its twin cpu-subset-tiny")
    p.add_argument("--results", default=None); p.add_argument("--device", default=None)
    a = p.parse_args(argv)
    if not a.budget_s > 0: raise SQError(f"--budget-s {a.budget_s:g} is not a positive number of seconds", "give e.g. --budget-s 540")
    if a.tiny and a.protocol not in (None, "tiny"): raise SQError(f"--tiny and --protocol {a.protocol} name two protocols", "give one of them")
    name = a.protocol or ("tiny" if a.tiny else "gpu")
    proto = dict(PROTOCOLS[name], **({"device": a.device} if a.device else {}))
    results = a.results or ROOT/"slices"/name
    idx = run_plan(proto, name, results, a.budget_s)
    print(f"{len(idx['runs'])} runs finished in {results}; records packed in {Path(results)/'records.tar.gz'}")
    return 0


if __name__ == "__main__":
    try: sys.exit(main())
    except SQError as e: print(f"slices: error: {e}", file=sys.stderr); sys.exit(2)
