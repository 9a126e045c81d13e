"""Core benchmarks (issue: the spine). Writes benchmarks/results/core.json and prints a markdown table.

Targets (2 CPU cores unless noted):
- digits end-to-end main job (`sigmaquant-lab search`, FP32 training included) <= 60 s
- QAT epoch time <= 1.5x the FP32 epoch time (digits CNN on CPU; ResNet-20 / CIFAR-10 with --cifar on a GPU)
- statistics + one Phase-1 clustering for a 50-layer model (torchvision resnet50: 54 layers) <= 50 ms

    python benchmarks/bench_core.py [--skip-e2e] [--cifar] [--device cuda] [--out benchmarks/results]
"""
import argparse, json, os, platform, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import torch, torchvision

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sigmaquant_lab.data import get_data
from sigmaquant_lab.models import get_model
from sigmaquant_lab.quant import quantize_, set_bits_, QuantConfig, quant_layers
from sigmaquant_lab.stats import layer_sigmas
from sigmaquant_lab.sigmaquant import balanced_kmeans_1d
from sigmaquant_lab.train import train_, calibrate_, TrainConfig


def e2e_digits():
    "Wall time of the README's main job (fresh FP32 cache, so training is included)."
    with tempfile.TemporaryDirectory() as d:
        s = Path(d)/"settings.ini"
        s.write_text((ROOT/"settings.ini").read_text().replace("cache = .cache/sigmaquant-lab", f"cache = {d}/cache"))
        exe = Path(sys.executable).parent/"sigmaquant-lab"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from sigmaquant_lab.cli import main; main()"]
        t0 = time.perf_counter()
        r = subprocess.run([*cmd, "--settings", str(s), "search", "--quiet", "--out", f"{d}/runs"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - t0
        assert r.returncode == 0, r.stderr[-2000:]
        t1 = time.perf_counter()
        subprocess.run([*cmd, "--settings", str(s), "search", "--quiet", "--no-record"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
        cached = time.perf_counter() - t1
    status = [l for l in r.stdout.splitlines() if l.startswith("status")]
    return dict(wall_s=round(wall, 2), wall_cached_fp32_s=round(cached, 2), status=status[0].split()[1] if status else "?", target_s=60)


def epoch_times(model_name, data, device, epochs=3, bits=None, batch_size=128):
    "Median FP32 and QAT epoch times on the same model and data."
    dev = torch.device(device)
    loader = data.loader("train", batch_size=batch_size, device=dev)
    def timed(m):
        ts = []
        for _ in range(epochs):
            if dev.type == "cuda": torch.cuda.synchronize()
            t = time.perf_counter(); train_(m, loader, TrainConfig(epochs=1, lr=0.01))
            if dev.type == "cuda": torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts[1:] if len(ts) > 1 else ts)   # first epoch warms up
    torch.manual_seed(0); m = get_model(model_name, data.num_classes, data.in_shape).to(dev)
    fp = timed(m)
    quantize_(m, QuantConfig(w_bits=8)); names = list(quant_layers(m))
    set_bits_(m, {n: (bits or [2, 4, 6, 8])[i % 4] for i, n in enumerate(names)})
    calibrate_(m, loader, 4)
    qat = timed(m)
    return dict(model=model_name, data=data.name, device=str(dev), fp32_epoch_s=round(fp, 4), qat_epoch_s=round(qat, 4),
                ratio=round(qat/fp, 3), target_ratio=1.5)


def stats_and_cluster(reps=30):
    "σ of every layer + one Phase-1 clustering for resnet50 (54 quantizable layers)."
    m = torchvision.models.resnet50(weights=None)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        names, raw, s = layer_sigmas(m, "minmax")
        balanced_kmeans_1d(s, 4, 0.1)
        ts.append(time.perf_counter() - t)
    return dict(model="resnet50", layers=len(names), median_ms=round(1e3*statistics.median(ts), 2),
                p95_ms=round(1e3*sorted(ts)[int(0.95*len(ts))-1], 2), target_ms=50)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT/"benchmarks"/"results"))
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--cifar", action="store_true", help="also ResNet-20 on CIFAR-10 (needs ../shared/data or the cache)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    res = dict(machine=dict(platform=platform.platform(), cpus=os.cpu_count(), torch=torch.__version__,
                            gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None, threads=torch.get_num_threads()))
    res["stats_cluster"] = stats_and_cluster()
    res["qat_vs_fp32_digits"] = epoch_times("digits_cnn", get_data("digits"), "cpu", epochs=5)
    if a.cifar: res["qat_vs_fp32_cifar"] = epoch_times("resnet20", get_data("cifar10"), a.device, epochs=3)
    if not a.skip_e2e: res["e2e_digits"] = e2e_digits()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    (out/"core.json").write_text(json.dumps(res, indent=1) + "\n")
    rows = ["| benchmark | measured | target |", "|---|---|---|",
            f"| σ + Phase-1 clustering, resnet50 ({res['stats_cluster']['layers']} layers) | {res['stats_cluster']['median_ms']} ms median, {res['stats_cluster']['p95_ms']} ms p95 | ≤ 50 ms |"]
    for k in ("qat_vs_fp32_digits", "qat_vs_fp32_cifar"):
        if k in res:
            q = res[k]; rows.append(f"| QAT / FP32 epoch, {q['model']} on {q['data']} ({q['device']}) | {q['qat_epoch_s']} s / {q['fp32_epoch_s']} s = {q['ratio']}× | ≤ 1.5× |")
    if "e2e_digits" in res:
        e = res["e2e_digits"]; rows.append(f"| digits main job end to end ({e['status']}) | {e['wall_s']} s ({e['wall_cached_fp32_s']} s with cached FP32) | ≤ 60 s |")
    table = "\n".join(rows)
    (out/"core.md").write_text(f"Machine: {res['machine']}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
