"""Benchmark: feature extraction, tlmic's engines against the naive ways, on this machine.

Same generated 224-px images (256 by default), same backbones (resnet50, densenet121, and a vision
transformer: timm's DINOv2 ViT-S/14 with registers, at 224 px), same cut points (the block ends: the
paper's for the CNNs, every transformer block and the final norm for the ViT), inputs already
decoded in memory so that engines are compared, not decoders:

  (a) naive per-layer: one separately truncated model per cut point, as the paper's code does
  (b) plain fp32 eager loop with forward hooks, a few lines, as a researcher would write it
  (c) tlmic torch fp32   (d) tlmic torch bf16   (e) tlmic onnx (onnxruntime, fp32)

For each: images/s, peak RSS (each in its own process), and fidelity against (b) per cut point
(max relative error, cosine). Also: all cut points in one pass vs the final layer alone; peak RSS
of a full `extract` at 1k vs 4k images; the change in the demo's per-layer probe AUROC from bf16,
next to the change that perturbations far below bf16's rounding cause (the measurement's resolution);
decode throughput from full-size JPEGs (with and without reduced-size decoding) vs the pixel cache;
the share of extraction time spent waiting for input. `--parts large` repeats the AUROC measurement
on 1,000 test phantoms, with fp16 too (about 6 minutes here).

A token map (the ViT's) is pooled over its patch tokens, its 5 prefix tokens (class + 4 registers)
excluded, in every method.

    python benchmarks/extract.py [--images 256] [--backbones resnet50,densenet121,timm:vit_small_patch14_reg4_dinov2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import time
from pathlib import Path

import numpy as np

OUT = Path("cache/bench/extract")
SIZE = 224  # every backbone runs at this input size (a fixed-size transformer is built for it)
TRANSFORMER = "timm:vit_small_patch14_reg4_dinov2"


def naive_pool(out, cp):
    """Average pooling as a researcher would write it: over the map, or over a transformer's patch tokens."""
    if cp.layout == "tokens":
        return out[:, cp.prefix :].mean(1)
    return out.mean(dim=(2, 3))


def tag(backbone: str) -> str:
    return backbone.replace(":", "-")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pixels(n: int, seed: int = 0):
    """n phantom radiographs, uint8 (n, 1, 224, 224)."""
    import torch

    from tlmic_feats.data.phantom import render_phantom

    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([render_phantom(rng, 224, int(rng.integers(0, 3))) for _ in range(n)])[:, None])


def _method(q, method: str, backbone: str, n: int, batch: int) -> None:
    import torch

    from tlmic_feats.backbones import build_backbone, select_cut_points
    from tlmic_feats.backbones.preprocess import device_normalize
    from tlmic_feats.features.engines import make_engine

    x = pixels(n)
    b = build_backbone(backbone, "random:0", input_size=SIZE)
    cps = select_cut_points(b.cut_points, "blocks")
    norm = device_normalize(b.preprocess)
    outs = {cp.address: [] for cp in cps}
    t0 = None
    with torch.inference_mode():
        if method == "a_naive_per_layer":
            t0 = time.perf_counter()
            for cp in cps:
                net = torch.nn.Sequential(norm, b.truncated(cp.address)).eval()
                for i in range(0, n, batch):
                    outs[cp.address].append(naive_pool(net(x[i : i + batch]), cp).numpy())
        elif method == "b_hooks_fp32":
            store = {}
            hooks = []
            for cp in cps:
                m = b.model.get_submodule(cp.taps[0].module)
                act = cp.taps[0].act
                hooks.append(
                    m.register_forward_hook(
                        lambda _m, _i, o, cp=cp, act=act: store.__setitem__(
                            cp.address, naive_pool(o.relu() if act else o, cp)
                        )
                    )
                )
            for i in range(0, n, batch):
                if i == batch:
                    t0 = time.perf_counter()
                b.model(norm(x[i : i + batch]))
                for a in outs:
                    outs[a].append(store[a].numpy())
        else:
            engine, precision = {
                "c_tlmic_torch_fp32": ("torch", "fp32"),
                "d_tlmic_torch_bf16": ("torch", "bf16"),
                "e_tlmic_onnx": ("onnx", "fp32"),
            }[method]
            eng = make_engine(
                engine, b, cps, "avg", "cpu", precision, cache_dir=OUT / "onnx", key={"bench": backbone, "blocks": True}
            )
            for i in range(0, n, batch):
                if i == batch:
                    t0 = time.perf_counter()
                for cp, o in zip(cps, eng(x[i : i + batch]), strict=True):
                    outs[cp.address].append(o)
    timed = n if method == "a_naive_per_layer" else n - batch
    seconds = time.perf_counter() - t0
    feats = {a: np.concatenate(v) for a, v in outs.items()}
    np.savez(OUT / f"{tag(backbone)}-{method}.npz", **feats)
    q.put({"img_per_s": round(timed / seconds, 2), "peak_rss_mb": round(rss_mb(), 1)})


def _one_pass_vs_final(q, backbone: str, n: int, batch: int, precision: str) -> None:
    from tlmic_feats.backbones import build_backbone, select_cut_points
    from tlmic_feats.features.engines import make_engine

    x = pixels(n)
    b = build_backbone(backbone, "random:0", input_size=SIZE)
    res = {}
    for name, spec in (("all cut points", "all"), ("final layer only", "blocks")):
        cps = select_cut_points(b.cut_points, spec)
        if spec == "blocks":
            cps = cps[-1:]
        eng = make_engine("torch", b, cps, "avg", "cpu", precision)
        eng(x[:batch])
        t = time.perf_counter()
        for i in range(0, n, batch):
            eng(x[i : i + batch])
        res[name] = round(time.perf_counter() - t, 2)
    q.put(res)


def _extract_rss(q, root: str, n: int, precision: str) -> None:
    from tlmic_feats import DataConfig, ExtractConfig, extract_features

    base = rss_mb()
    r = extract_features(
        ExtractConfig(
            data=DataConfig(root),
            backbone="resnet50",
            weights="random:0",
            layers="all",
            precision=precision,
            store=str(Path(root).parent / f"store-{n}.zarr"),
            overwrite=True,
        ),
        progress=False,
    )
    q.put(
        {
            "n": n,
            "peak_rss_mb": round(rss_mb(), 1),
            "rss_after_import_mb": round(base, 1),
            "img_per_s": round(r.images_per_second, 2),
            "input_wait_share": round(r.input_wait_seconds / r.seconds, 4),
        }
    )


def in_process(target, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(q, *args))
    p.start()
    out = q.get()
    p.join()
    return out


def write_images(root: Path, n: int, size: int = 224, fmt: str = "png", seed: int = 1) -> Path:
    from PIL import Image

    from tlmic_feats.data.phantom import render_phantom

    rng = np.random.default_rng(seed)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = render_phantom(rng, 224, i % 2 * 2)
        im = Image.fromarray(img)
        if size != 224:
            im = im.resize((size, int(size * 1.2)), Image.BICUBIC)
        im.save(root / ("a", "b")[i % 2] / f"{i:05d}.{fmt}", quality=95)
    return root


def decode_throughput(n: int) -> dict:
    from tlmic_feats.data import DataConfig, load_manifest
    from tlmic_feats.data.images import open_image, resize_center_crop
    from tlmic_feats.features.pixels import build_pixel_cache
    from tlmic_feats.runtime.paths import cache_root

    root = write_images(OUT / "jpeg-2000px", n, size=2000, fmt="jpeg")
    m = load_manifest(DataConfig(str(root)))
    paths = list(m.source.paths)
    out = {}
    for name, min_side in (("full decode + resize", None), ("reduced-size decode (draft) + resize", 256)):
        t = time.perf_counter()
        for p in paths:
            resize_center_crop(open_image(p, min_side=min_side), resize_size=256, input_size=224)
        out[name] = round(n / (time.perf_counter() - t), 1)
    cache = build_pixel_cache(m, 256, "bilinear", cache_root() / "pixels")
    t = time.perf_counter()
    for i in range(0, n, 32):
        cache.read(np.arange(i, min(n, i + 32)))
    out["pixel cache read"] = round(n / (time.perf_counter() - t), 1)
    return out


def demo_auroc_shift() -> dict:
    """Per-layer test AUROC of the demo's logistic-regression probes: how far bf16 features move it
    from fp32, next to the resolution of the measurement itself -- the moves caused by
    perturbations far below bf16's rounding (fp32 through onnxruntime; fp32 features times
    1 + 1e-6 N(0, 1))."""
    from tlmic_feats.data.phantom import PhantomConfig

    return auroc_shift("demo", PhantomConfig(), reduced=("bf16",), onnx=True)


def large_auroc_shift() -> dict:
    """The same on 1,000 test and 300 validation phantoms (the demo's 200 training images), where
    fp32-level perturbations move no layer's AUROC by more than ~0.001: whether a reduced
    precision's move is its own or the small test set's. fp16 included (its autocast run on the
    CPU, for its rounding; GPUs are where it is fast)."""
    from tlmic_feats.data.phantom import PhantomConfig

    return auroc_shift("large", PhantomConfig(n_val=300, n_test=1000), reduced=("bf16", "fp16"), onnx=False)


def auroc_shift(name: str, phantom, reduced: tuple[str, ...], onnx: bool) -> dict:
    from unittest import mock

    from tlmic_feats import DataConfig, ExtractConfig, FeatureStore, extract_features
    from tlmic_feats.data.phantom import make_phantom_dataset
    from tlmic_feats.probes.config import ProbeConfig
    from tlmic_feats.probes.grid import run_probes

    data = make_phantom_dataset(OUT / f"{name}-data", phantom)

    def aurocs(store, label: str) -> dict:
        shutil.rmtree(OUT / f"{name}-probe-{label}", ignore_errors=True)  # a fresh measurement
        config = ProbeConfig(
            store=str(store), models=("logreg",), seeds=1, bootstrap=0, out=str(OUT / f"{name}-probe-{label}")
        )
        return {r["layer"]: r["auroc"] for r in run_probes(config, progress=False).rows}

    def extract(precision: str, engine: str):
        config = ExtractConfig(
            data=DataConfig(str(data)),
            backbone="efficientnet_lite0",
            layers="all",
            pool="avgmax",
            precision=precision,
            engine=engine,
            store=str(OUT / f"{name}-{engine}-{precision}.zarr"),
        )
        # fp16 is refused on a CPU (it is slow there); for its rounding alone, let autocast run it.
        with mock.patch("tlmic_feats.features.extract.resolve_precision", lambda p, d, **k: p):
            return extract_features(config, progress=False).store

    fp32 = extract("fp32", "torch")
    auc = {"fp32": aurocs(fp32.path, "fp32")}
    for precision in reduced:
        auc[precision] = aurocs(extract(precision, "torch").path, precision)
    if onnx:
        auc["onnxruntime fp32"] = aurocs(extract("fp32", "onnx").path, "onnx-fp32")
    rng = np.random.default_rng(0)
    jittered = {}
    for a in fp32.addresses:
        x = fp32.features(a)
        jittered[a] = (x * (1 + 1e-6 * rng.standard_normal(x.shape))).astype(np.float32)
    path = OUT / f"{name}-fp32-jitter.zarr"
    FeatureStore.from_arrays(
        path,
        jittered,
        labels=fp32.labels,
        label_kind=fp32.label_kind,
        label_names=fp32.label_names,
        splits=fp32.splits,
        ids=fp32.ids,
        overwrite=True,
    )
    auc["fp32 x (1 + 1e-6 N)"] = aurocs(path, "jitter")

    def moves(label: str) -> dict:
        d = {a: abs(auc[label][a] - auc["fp32"][a]) for a in auc["fp32"]}
        worst = max(d, key=d.get)
        v = np.array(list(d.values()))
        return {
            "max_abs_auroc_change": round(d[worst], 5),
            "median": round(float(np.median(v)), 5),
            "layers_over_0.005": int((v > 0.005).sum()),
            "at_layer": worst,
        }

    out = {**moves(reduced[0]), "layers": len(auc["fp32"]), "test_images": int((fp32.splits == "test").sum())}
    out["others"] = {label: moves(label) for label in reduced[1:]}
    out["resolution"] = {label: moves(label) for label in auc if label not in ("fp32", *reduced)}
    return out


def _print_auroc_shift(title: str, d: dict, first: str) -> None:
    print(
        f"{title} (efficientnet_lite0, {d['layers']} layers, {d['test_images']} test images), |change of test AUROC|:"
    )
    for label, m in {first: d, **d.get("others", {}), **d["resolution"]}.items():
        print(
            f"  {label:22s} max {m['max_abs_auroc_change']:.4f} (layer {m['at_layer']}), median {m['median']:.4f}, "
            f"layers over 0.005: {m['layers_over_0.005']}/{d['layers']}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--backbones", default=f"resnet50,densenet121,{TRANSFORMER}")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rss-sizes", default="1000,4000")
    ap.add_argument(
        "--parts",
        default="engines,rss,demo,decode",
        help="which to run: engines, rss, demo, decode, large (the last not by default)",
    )
    ap.add_argument("--quick", action="store_true", help="engines only")
    args = ap.parse_args()
    parts = {"engines"} if args.quick else set(args.parts.split(","))
    if "engines" in parts:
        shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TLMIC_CACHE", str(OUT / "cache"))
    result = OUT / "result.json"
    doc = json.loads(result.read_text()) if result.is_file() and "engines" not in parts else {}
    doc.update(
        {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
            "images": args.images,
            "batch": args.batch,
            "cut points": "block ends",
        }
    )
    doc.setdefault("backbones", {})
    methods = ("a_naive_per_layer", "b_hooks_fp32", "c_tlmic_torch_fp32", "d_tlmic_torch_bf16", "e_tlmic_onnx")
    for backbone in args.backbones.split(",") if "engines" in parts else []:
        rows = {m: in_process(_method, m, backbone, args.images, args.batch) for m in methods}
        ref = np.load(OUT / f"{tag(backbone)}-b_hooks_fp32.npz")
        for m in methods:
            got = np.load(OUT / f"{tag(backbone)}-{m}.npz")
            rel, cos = {}, {}
            for a in ref.files:
                x, y = got[a].astype(np.float64), ref[a].astype(np.float64)
                rel[a] = float(np.abs(x - y).max() / np.abs(y).max())
                cos[a] = float(np.min((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))))
            rows[m].update(max_rel_err=max(rel.values()), min_cosine=min(cos.values()), per_layer_rel_err=rel)
            rows[m]["speedup_vs_b"] = round(rows[m]["img_per_s"] / rows["b_hooks_fp32"]["img_per_s"], 2)
        best = max(("c_tlmic_torch_fp32", "d_tlmic_torch_bf16", "e_tlmic_onnx"), key=lambda m: rows[m]["img_per_s"])
        precision = "bf16" if best == "d_tlmic_torch_bf16" else "fp32"
        one = in_process(_one_pass_vs_final, backbone, args.images, args.batch, precision)
        doc["backbones"][backbone] = {
            "methods": rows,
            "best": best,
            "all_cut_points_vs_final_only": {
                **one,
                "precision": precision,
                "ratio": round(one["all cut points"] / one["final layer only"], 3),
            },
        }
        print(
            f"\n{backbone} ({args.images} images of 224 px, block-end cut points, batch {args.batch}; {doc['machine']})"
        )
        print(
            f"{'method':24s} {'img/s':>8s} {'vs (b)':>7s} {'peak RSS MB':>12s} {'max rel err':>12s} {'min cosine':>11s}"
        )
        for m in methods:
            r = rows[m]
            print(
                f"{m:24s} {r['img_per_s']:8.1f} {r['speedup_vs_b']:6.2f}x {r['peak_rss_mb']:12.0f} "
                f"{r['max_rel_err']:12.2e} {r['min_cosine']:11.6f}"
            )
        print(
            f"all {len(np.load(OUT / f'{tag(backbone)}-b_hooks_fp32.npz').files)} block ends -> all cut points in one pass: "
            f"{one['all cut points']} s vs final layer only {one['final layer only']} s "
            f"(ratio {one['all cut points'] / one['final layer only']:.3f}, {precision})"
        )
    if "rss" in parts:
        sizes = [int(s) for s in args.rss_sizes.split(",")]
        shutil.rmtree(OUT / "rss-images", ignore_errors=True)
        big = write_images(OUT / "rss-images", max(sizes))
        rss = []
        for n in sizes:
            shutil.rmtree(OUT / f"rss-{n}", ignore_errors=True)
            sub = OUT / f"rss-{n}" / "data"
            sub.mkdir(parents=True)
            for cls in ("a", "b"):
                (sub / cls).mkdir()
                for f in sorted((big / cls).iterdir())[: n // 2]:
                    os.link(f, sub / cls / f.name)
            rss.append(in_process(_extract_rss, str(sub), n, "bf16"))
        doc["extract_rss_vs_n"] = rss
        print("\nfull `extract` (resnet50, all 20 cut points, bf16, pixel cache):")
        for r in rss:
            print(
                f"  {r['n']:5d} images: peak RSS {r['peak_rss_mb']:.0f} MB, {r['img_per_s']:.1f} img/s, "
                f"waiting for input {100 * r['input_wait_share']:.2f}% of the time"
            )
    if "demo" in parts:
        doc["demo_auroc_bf16"] = demo_auroc_shift()
        _print_auroc_shift("demo probes", doc["demo_auroc_bf16"], "bf16")
    if "large" in parts:
        doc["large_auroc_reduced"] = large_auroc_shift()
        _print_auroc_shift("probes on a larger phantom set", doc["large_auroc_reduced"], "bf16")
    if "decode" in parts:
        doc["decode_img_per_s"] = decode_throughput(64)
        print(
            "decode, 2000-px JPEGs to 256 px: "
            + ", ".join(f"{k} {v} img/s" for k, v in doc["decode_img_per_s"].items())
        )
    result.write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {OUT / 'result.json'}")


if __name__ == "__main__":
    main()
