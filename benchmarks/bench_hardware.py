"""Benchmark the hardware cost model (sigmaquant_lab.hardware) on torchvision ResNet-50 at 224x224.

Measures the one-time shape pass (a batch-1 forward with hooks, on CPU and on the meta device),
building the CostModel, costing one bit map, and costing a batch of bit maps. Writes
`<out>/hardware.json` and prints a markdown table.

    python benchmarks/bench_hardware.py --out benchmarks/results
"""
from __future__ import annotations
import argparse, os, platform, statistics, sys, time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torchvision

from sigmaquant_lab.core import atomic_write_json
from sigmaquant_lab.hardware import CostModel, HardwareConfig, layer_shapes


def timed(fn, repeats:int) -> tuple[list[float], object]:
    "Wall seconds of `repeats` calls of `fn` and its last result."
    out, ts = None, []
    for _ in range(repeats):
        t0 = time.perf_counter(); out = fn(); ts.append(time.perf_counter() - t0)
    return ts, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results", help="folder for hardware.json")
    p.add_argument("--size", type=int, default=224, help="input height and width")
    p.add_argument("--shape-repeats", type=int, default=3, help="repeats of the shape pass")
    p.add_argument("--single-repeats", type=int, default=500, help="repeats of the one-bit-map cost")
    p.add_argument("--maps", type=int, default=1000, help="bit maps per batch")
    p.add_argument("--batch-repeats", type=int, default=7, help="repeats of the batch cost")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    shape = (3, a.size, a.size)
    model = torchvision.models.resnet50(weights=None)
    with torch.device("meta"): meta_model = torchvision.models.resnet50(weights=None)

    t_cpu, shapes = timed(lambda: layer_shapes(model, shape), a.shape_repeats)
    t_meta, shapes_meta = timed(lambda: layer_shapes(meta_model, shape), a.shape_repeats)
    assert shapes == shapes_meta
    t_build, cm = timed(lambda: CostModel(shapes, HardwareConfig()), 5)

    names = cm.names
    bit_maps = [dict(zip(names, rng.choice([2, 4, 6, 8], size=len(names)).tolist())) for _ in range(a.single_repeats)]
    it = iter(bit_maps)
    cm.costs(bit_maps[0])  # warm-up
    t_single, _ = timed(lambda: cm.costs(next(it)), a.single_repeats)
    B = rng.choice([2, 4, 6, 8], size=(a.maps, len(names)))
    cm.costs_batch(B[:10])  # warm-up
    t_batch, cb = timed(lambda: cm.costs_batch(B), a.batch_repeats)
    # the batch agrees with one-at-a-time costing
    assert np.allclose(cb.energy_pj[7], cm.costs(B[7]).energy_pj)

    med = statistics.median
    res = dict(
        benchmark="hardware cost model", model="torchvision resnet50 (weights=None)", input_shape=list(shape),
        layers=len(names), macs=int(cm.macs.sum()), weights=int(cm.params.sum()),
        shape_pass_cpu_s=med(t_cpu), shape_pass_meta_s=med(t_meta), cost_model_build_ms=med(t_build) * 1e3,
        single_map_ms_median=med(t_single) * 1e3, single_map_ms_p95=float(np.percentile(t_single, 95)) * 1e3,
        single_map_repeats=a.single_repeats,
        batch_maps=a.maps, batch_s_median=med(t_batch), batch_us_per_map=med(t_batch) / a.maps * 1e6,
        batch_repeats=a.batch_repeats,
        hardware=HardwareConfig().describe(),
        machine=dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                     numpy=np.__version__, cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                     processor=platform.processor() or platform.machine()),
        when=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out/"hardware.json", res)

    rows = [
        ("shape pass, CPU forward (one-time)", f"{res['shape_pass_cpu_s']*1e3:.0f} ms", "median of %d" % a.shape_repeats),
        ("shape pass, meta device (one-time)", f"{res['shape_pass_meta_s']*1e3:.0f} ms", "median of %d" % a.shape_repeats),
        ("CostModel build", f"{res['cost_model_build_ms']:.2f} ms", "median of 5"),
        ("one bit map, `costs(dict)`", f"{res['single_map_ms_median']:.3f} ms (p95 {res['single_map_ms_p95']:.3f})", f"median of {a.single_repeats}; budget 10 ms"),
        (f"{a.maps} bit maps, `costs_batch`", f"{res['batch_s_median']*1e3:.2f} ms ({res['batch_us_per_map']:.2f} us/map)", f"median of {a.batch_repeats}; budget 1 s"),
    ]
    print(f"Hardware cost model, ResNet-50 {a.size}x{a.size} ({len(names)} layers), {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}\n")
    print("| step | time | note |\n|---|---|---|")
    for r in rows: print("| " + " | ".join(r) + " |")
    print(f"\nwrote {out/'hardware.json'}")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
