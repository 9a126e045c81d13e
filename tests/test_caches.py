"""Caches are keyed by content (issue 12): the float model is found again only for the same data and recipe; a dataset
edited in place, or another one with the same name and size, trains its own."""
import os, time

import numpy as np
import torch
from PIL import Image

from sigmaquant_lab.data import load_imagefolder_bundle, make_toy_imagefolder
from sigmaquant_lab.train import float_model

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _bundle(root, cache):
    return load_imagefolder_bundle(root, cache_dir=cache, progress=False, augment=False)


def _fp(data, cache):
    return float_model(data, "digits_cnn", epochs=1, batch_size=8, cache_dir=cache, progress=False)


def _entries(cache): return sorted(p.name for p in cache.glob("fp32-*.pt"))


def test_float_model_cache_follows_the_data(tmp_path):
    torch.set_num_threads(1)
    cache = tmp_path/"cache"
    a = make_toy_imagefolder(tmp_path/"a"/"toy", n=6, size=12)
    m1 = _fp(_bundle(a, cache), cache)
    assert len(_entries(cache)) == 1
    m1b = _fp(_bundle(a, cache), cache)                                    # same data, same recipe: the cached model
    assert len(_entries(cache)) == 1 and all(torch.equal(x, y) for x, y in zip(m1.state_dict().values(), m1b.state_dict().values()))
    # the same folder edited in place (one image repainted): a new decode and a new float model
    img = sorted((a/"train"/"cat").iterdir())[0]
    Image.fromarray(np.full((12, 12, 3), 255, np.uint8)).save(img)
    os.utime(img, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    d2 = _bundle(a, cache)
    _fp(d2, cache)
    assert len(_entries(cache)) == 2
    # another folder with the same name and the same number of images, other pixels: its own model too
    b = make_toy_imagefolder(tmp_path/"b"/"toy", n=6, size=12, classes=("red", "green", "blue"))
    for f in (b/"train").rglob("*.png"): Image.fromarray(np.random.default_rng(len(str(f))).integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(f)
    db = _bundle(b, cache)
    assert db.name == d2.name and len(db.y_train) == len(d2.y_train)
    _fp(db, cache)
    assert len(_entries(cache)) == 3
    # a different recipe is another entry as well
    float_model(db, "digits_cnn", epochs=2, batch_size=8, cache_dir=cache, progress=False)
    assert len(_entries(cache)) == 4
    # the recipe's settings.ini parts (fp weight decay, label smoothing) are part of the key: a user's file that changes them retrains
    st = tmp_path/"settings.ini"; st.write_text("[train]\nfp_weight_decay = 0.001\nfp_label_smoothing = 0.1\n")
    from sigmaquant_lab.core import load_settings
    float_model(db, "digits_cnn", epochs=2, batch_size=8, cache_dir=cache, progress=False, settings=load_settings(st))
    assert len(_entries(cache)) == 5 and any("wd0.001-ls0.1" in n for n in _entries(cache))
