"""Benchmark: feature extraction, tlmic's engines against the naive ways, on this machine.

Same generated 224-px images (256 by default), same backbones (resnet50, densenet121,
efficientnet_lite0, and a vision transformer: timm's DINOv2 ViT-S/14 with registers), same cut
points (the block ends: the paper's for the CNNs, every transformer block and the final norm for the
ViT), inputs already decoded in memory so that engines are compared, not decoders:

  (a) naive per-layer: one separately truncated model per cut point, as the paper's code does
  (b) plain fp32 eager loop with forward hooks, a few lines, as a researcher would write it
  (c) tlmic torch fp32   (d) tlmic torch bf16   (e) tlmic onnx (onnxruntime, fp32)
  (f) tlmic openvino fp32   (g) tlmic openvino bf16   (f, g need `pip install 'tlmic[openvino]'`)

For each: images/s (the median of --repeats runs, the methods interleaved: run 1 of every method,
then run 2 of every method, ...; each run in its own process), ratio to (b), peak RSS, the share
of the machine's bf16 matmul peak it reaches (the network's FLOPs x images/s over a large bf16
matmul's FLOP/s, measured here by part `peak`), and fidelity against (b) per cut point (max
relative error, cosine).

Other parts: all cut points in one pass vs the final layer alone (`engines`); peak RSS of a full
`extract` at 1k vs 4k images (`rss`); the input pipeline of `extract --engine openvino`: input
waits with the pixel cache and decode workers vs the engine on these cores (`pipeline`); decode
throughput (`decode`); and the fidelity criterion of `--precision auto` (features/auto.py):
`large` runs it for every backbone and candidate engine+precision on 1,000 test phantoms (slow:
tens of minutes on 2 cores), `demo` on the demo's 60 (too few to validate anything; a quick check).

A token map (the ViT's) is pooled over its patch tokens, its 5 prefix tokens (class + 4 registers)
excluded, in every method.

    python benchmarks/extract.py [--images 256] [--backbones resnet50,densenet121,efficientnet_lite0,timm:vit_small_patch14_reg4_dinov2]
        [--repeats 3] [--parts engines,peak,rss,pipeline,decode] [--quick]
    python benchmarks/extract.py --parts large [--large-backbones ...] [--candidates torch:bf16,openvino:fp32,...]
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

# Where results go; TLMIC_BENCH_OUT to run two parts side by side (spawned children read it too).
OUT = Path(os.environ.get("TLMIC_BENCH_OUT", "cache/bench/extract"))
SIZE = 224  # every backbone runs at this input size (a fixed-size transformer is built for it)
TRANSFORMER = "timm:vit_small_patch14_reg4_dinov2"


def naive_pool(out, cp):
    """Average pooling as a researcher would write it: over the map, or over a transformer's patch tokens."""
    if cp.layout == "tokens":
        return out[:, cp.prefix :].mean(1)
    return out.mean(dim=(2, 3))


def file_tag(backbone: str) -> str:
    return backbone.replace(":", "-")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pixels(n: int, seed: int = 0):
    """n phantom radiographs, uint8 (n, 1, 224, 224)."""
    import torch

    from tlmic_feats.data.phantom import render_phantom

    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([render_phantom(rng, 224, int(rng.integers(0, 3))) for _ in range(n)])[:, None])


ENGINE_METHODS = {
    "c_tlmic_torch_fp32": ("torch", "fp32"),
    "d_tlmic_torch_bf16": ("torch", "bf16"),
    "e_tlmic_onnx": ("onnx", "fp32"),
    "f_tlmic_openvino_fp32": ("openvino", "fp32"),
    "g_tlmic_openvino_bf16": ("openvino", "bf16"),
}
METHODS = ("a_naive_per_layer", "b_hooks_fp32", *ENGINE_METHODS)


def _method(q, method: str, backbone: str, n: int, batch: int, save: bool) -> None:
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
            engine, precision = ENGINE_METHODS[method]
            eng = make_engine(
                engine, b, cps, "avg", "cpu", precision, cache_dir=OUT, key={"bench": backbone, "blocks": True}
            )
            for i in range(0, n, batch):
                if i == batch:
                    t0 = time.perf_counter()
                for cp, o in zip(cps, eng(x[i : i + batch]), strict=True):
                    outs[cp.address].append(o)
    timed = n if method == "a_naive_per_layer" else n - batch
    seconds = time.perf_counter() - t0
    if save:
        np.savez(OUT / f"{file_tag(backbone)}-{method}.npz", **{a: np.concatenate(v) for a, v in outs.items()})
    q.put({"img_per_s": round(timed / seconds, 2), "peak_rss_mb": round(rss_mb(), 1)})


def _gflop_per_image(q, backbone: str) -> None:
    """FLOPs of one image through the tapping network of the block ends (torch's FLOP counter)."""
    import torch

    from tlmic_feats.backbones import build_backbone, select_cut_points
    from tlmic_feats.backbones.cutpoints import tap_network
    from tlmic_feats.finetune.compactness import count_macs

    b = build_backbone(backbone, "random:0", input_size=SIZE)
    net = tap_network(b.family, b.model, select_cut_points(b.cut_points, "blocks"), "avg", b.preprocess).eval()
    q.put(2 * count_macs(net, torch.zeros(1, 1, 224, 224, dtype=torch.uint8)) / 1e9)


def _matmul_peak(q, n: int = 4096, seconds: float = 3.0) -> None:
    """GFLOP/s of a large square matmul: bf16 and fp32 through torch (oneDNN) and bf16 through
    OpenVINO where installed, on all of torch's threads. The machine's bf16 peak is the higher bf16
    figure (each the best of several runs: the peak, not the average of a busy moment)."""
    import torch

    def best_of(run) -> float:
        run()
        best, t_end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            run()
            best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
        return round(best, 1)

    out = {"threads": torch.get_num_threads(), "n": n}
    for name, dtype in (("torch_bf16", torch.bfloat16), ("torch_fp32", torch.float32)):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        out[f"{name}_gflop_per_s"] = best_of(lambda a=a, b=b: torch.mm(a, b))
    if "bf16" in _openvino_available():
        import openvino as ov
        import openvino.opset13 as ops

        x = ops.parameter([n, n], ov.Type.f32, name="x")
        model = ov.Model([ops.matmul(x, ops.constant(np.random.randn(n, n).astype(np.float32)), False, False)], [x])
        config = {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
        data = np.random.randn(n, n).astype(np.float32)
        out["openvino_bf16_gflop_per_s"] = best_of(lambda: request.infer({0: data}))
    out["bf16_gflop_per_s"] = max(v for k, v in out.items() if "bf16" in k)
    q.put(out)


def _openvino_available() -> tuple[str, ...]:
    """The precisions OpenVINO offers here (empty when it is not installed)."""
    try:
        from tlmic_feats.features.engines import openvino_precisions

        return openvino_precisions()
    except ImportError:
        return ()


def _one_pass_vs_final(q, backbone: str, n: int, batch: int, engine: str, precision: str) -> None:
    from tlmic_feats.backbones import build_backbone, select_cut_points
    from tlmic_feats.features.engines import make_engine

    x = pixels(n)
    b = build_backbone(backbone, "random:0", input_size=SIZE)
    res = {}
    for name, spec in (("all cut points", "all"), ("final layer only", "blocks")):
        cps = select_cut_points(b.cut_points, spec)
        if spec == "blocks":
            cps = cps[-1:]
        eng = make_engine(engine, b, cps, "avg", "cpu", precision, cache_dir=OUT, key={"one-pass": backbone, "s": spec})
        eng(x[:batch])
        t = time.perf_counter()
        for i in range(0, n, batch):
            eng(x[i : i + batch])
        res[name] = round(time.perf_counter() - t, 2)
    q.put(res)


def _extract_run(q, root: str, n: int, engine: str, precision: str, workers: int, pixel_cache: bool, tag: str) -> None:
    from tlmic_feats import DataConfig, ExtractConfig, extract_features

    base = rss_mb()
    t = time.perf_counter()
    r = extract_features(
        ExtractConfig(
            data=DataConfig(root),
            backbone="resnet50",
            weights="random:0",
            layers="all",
            engine=engine,
            precision=precision,
            workers=workers,
            pixel_cache=pixel_cache,
            store=str(Path(root).parent / f"store-{tag}.zarr"),
            overwrite=True,
        ),
        progress=False,
    )
    q.put(
        {
            "n": n,
            "engine": engine,
            "precision": precision,
            "workers": workers,
            "pixel_cache": pixel_cache,
            "wall_s": round(time.perf_counter() - t, 2),
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


def pipeline(n: int, engine: str, precision: str) -> list[dict]:
    """`extract` (resnet50, all cut points) from 1,000-px JPEGs on disk: with the pixel cache cold
    (decode, then extract) and warm, and without it at 0, 1 and 2 decode workers (decoding then
    competes with the engine for the cores). Each run in its own process, one after the other."""
    root = OUT / "pipeline" / "data"
    if not root.is_dir() or sum(1 for _ in root.rglob("*.jpeg")) != n:
        shutil.rmtree(root.parent, ignore_errors=True)
        write_images(root, n, size=1000, fmt="jpeg", seed=3)
    shutil.rmtree(Path(os.environ["TLMIC_CACHE"]) / "pixels", ignore_errors=True)  # the first run decodes
    runs = [("pixel cache, cold", -1, True), ("pixel cache, warm", -1, True)]
    runs += [(f"no pixel cache, {w} workers", w, False) for w in (0, 1, 2)]
    out = []
    for label, workers, cached in runs:
        r = in_process(_extract_run, str(root), n, engine, precision, workers, cached, label.replace(" ", "-"))
        out.append({"run": label, **r})
    return out


# --- the fidelity criterion (features/auto.py) ---------------------------------------------------------


def fidelity(name: str, phantom, backbones: list[str], candidates: list[tuple[str, str]]) -> dict:
    """For each backbone: torch fp32 features and each candidate's, logistic-regression probes on
    every layer (avg+max pooling, all training images), and the paired criterion's verdict of each
    candidate against fp32. A control goes with them: fp32 features times 1 + 1e-6 N(0, 1), far
    below any precision's rounding, which the criterion must validate."""
    from tlmic_feats import FeatureStore
    from tlmic_feats.backbones import build_backbone
    from tlmic_feats.data.phantom import make_phantom_dataset
    from tlmic_feats.features.auto import paired_fidelity
    from tlmic_feats.runtime.devices import hardware_class
    from tlmic_feats.runtime.errors import WeightsUnavailableError

    data = make_phantom_dataset(OUT / f"{name}-data", phantom)
    doc = {}
    for backbone in backbones:
        try:
            build_backbone(backbone, "imagenet")
            weights = "imagenet"
        except WeightsUnavailableError:
            weights = "random:0"  # no offline ImageNet weights here: a random network's features
        tag = f"{name}-{backbone}"
        ref_store, ref_speed = _fidelity_extract(data, backbone, weights, "torch", "fp32", tag)
        kind = ref_store.label_kind
        y, reference = _fidelity_probes(ref_store.path, OUT / f"{tag}-probe-torch-fp32", kind)
        entry = {"weights": weights, "hardware": hardware_class("cpu"), "reference_img_per_s": ref_speed}
        rng = np.random.default_rng(0)
        jittered, by_array = {}, {}
        for a in ref_store.addresses:  # once per stored array: aliases (ResNet's "1" is "1.3") stay equal
            array = ref_store.layer(a).array
            if array not in by_array:
                x = ref_store.features(a)
                by_array[array] = (x * (1 + 1e-6 * rng.standard_normal(x.shape))).astype(np.float32)
            jittered[a] = by_array[array]
        control = OUT / f"{tag}-fp32-jitter.zarr"
        FeatureStore.from_arrays(
            control,
            jittered,
            labels=ref_store.labels,
            label_kind=kind,
            label_names=ref_store.label_names,
            splits=ref_store.splits,
            ids=ref_store.ids,
            overwrite=True,
        )
        runs = {"control: fp32 x (1 + 1e-6 N)": (control, None)}
        for engine, precision in candidates:
            if engine == "openvino" and precision not in _openvino_available():
                entry[f"{engine} {precision}"] = {"skipped": "openvino not installed or precision not offered"}
                continue
            runs[f"{engine} {precision}"] = _fidelity_extract(data, backbone, weights, engine, precision, tag)
        for label, (store, speed) in runs.items():
            path = store if isinstance(store, Path) else store.path
            _, layers = _fidelity_probes(path, OUT / f"{tag}-probe-{label.replace(' ', '-')}", kind)
            v = paired_fidelity(y, kind, reference, layers)
            worst, at = v.max_abs_change
            entry[label] = {
                "validated": v.validated,
                "reasons": list(v.reasons),
                "best_layer": v.best_layer,
                "best_layer_fp32": v.best_layer_reference,
                "layers": len(v.changes),
                "layers_not_equivalent": list(v.layers_not_equivalent),
                "margin": v.margin,
                "max_abs_auroc_change": round(worst, 5),
                "at_layer": at,
                "median_abs_auroc_change": round(float(np.median([abs(c[0]) for c in v.changes.values()])), 5),
                "n_test": v.n_test,
                "extract_img_per_s": speed,
                "changes_90ci": {a: [round(c, 5) for c in cs] for a, cs in v.changes.items()},
            }
        doc[backbone] = entry
    return doc


def _fidelity_extract(data: Path, backbone: str, weights: str, engine: str, precision: str, tag: str):
    """Every cut point of ``backbone`` on ``data`` (avg+max pooled): ``(store, images/s)``."""
    from unittest import mock

    from tlmic_feats import DataConfig, ExtractConfig, extract_features

    config = ExtractConfig(
        data=DataConfig(str(data)),
        backbone=backbone,
        weights=weights,
        layers="all",
        pool="avgmax",
        engine=engine,
        precision=precision,
        store=str(OUT / f"{tag}-{engine}-{precision}.zarr"),
        overwrite=True,
    )
    # fp16 is refused on a CPU (it is slow there); for its rounding alone, let torch autocast run it.
    with mock.patch("tlmic_feats.features.auto.resolve_precision", lambda p, d, **k: p):
        report = extract_features(config, progress=False)
    return report.store, round(report.images_per_second, 2)


def _fidelity_probes(store: Path, out: Path, kind: str) -> tuple[np.ndarray, dict]:
    """A logistic-regression probe per layer (all training images, one seed): the test labels and
    ``{layer: (validation AUPRC, test scores)}``, read back from the probes' predictions files."""
    from tlmic_feats.metrics.predictions import read_predictions
    from tlmic_feats.probes.config import ProbeConfig
    from tlmic_feats.probes.grid import run_probes

    shutil.rmtree(out, ignore_errors=True)  # a fresh measurement
    config = ProbeConfig(store=str(store), models=("logreg",), seeds=1, fractions=(1.0,), bootstrap=0, out=str(out))
    layers, y = {}, None
    for r in run_probes(config, progress=False).rows:
        _, y, scores = read_predictions(out / r["predictions"], kind)["test"]
        layers[r["layer"]] = (float(r["val_auprc"]), scores)
    return y, layers


def _print_fidelity(title: str, doc: dict) -> None:
    print(f"\n{title}: paired criterion against torch fp32 (features/auto.py), logistic-regression probes per layer")
    print(
        f"{'backbone':19s} {'candidate':30s} {'verdict':13s} {'best layer':>14s} {'not equiv.':>10s} "
        f"{'max |dAUROC|':>13s} {'median':>7s} {'extract img/s':>13s}"
    )
    for backbone, entry in doc.items():
        for label, v in entry.items():
            if not isinstance(v, dict):
                continue
            if "skipped" in v:
                print(f"{backbone:19s} {label:30s} skipped: {v['skipped']}")
                continue
            verdict = "validated" if v["validated"] else "not validated"
            best = f"{v['best_layer']} ({v['best_layer_fp32']})"
            print(
                f"{backbone:19s} {label:30s} {verdict:13s} {best:>14s} "
                f"{len(v['layers_not_equivalent']):>4d}/{v['layers']:<5d} "
                f"{v['max_abs_auroc_change']:8.4f} @{v['at_layer']:<4s} {v['median_abs_auroc_change']:7.4f} "
                f"{v['extract_img_per_s'] or float('nan'):13.1f}"
            )
            for reason in v["reasons"]:
                print(f"{'':19s}   - {reason}")
        print(
            f"{'':19s} ({entry['weights']} weights, {entry['hardware']}, "
            f"torch fp32 extract {entry['reference_img_per_s']} img/s; best layer: candidate's (fp32's))"
        )


# --- the engines table -----------------------------------------------------------------------------------


def engines_table(backbone: str, n: int, batch: int, repeats: int, peak: dict | None) -> dict:
    methods = [m for m in METHODS if ENGINE_METHODS.get(m, ("", ""))[0] != "openvino" or _ov_ok(m)]
    runs = {m: [] for m in methods}
    for r in range(repeats):  # interleaved: every method once per round
        for m in methods:
            runs[m].append(in_process(_method, m, backbone, n, batch, r == 0))
    gflop = in_process(_gflop_per_image, backbone)
    rows = {}
    for m in methods:
        speeds = [x["img_per_s"] for x in runs[m]]
        rows[m] = {
            "img_per_s": float(np.median(speeds)),
            "img_per_s_runs": speeds,
            "peak_rss_mb": max(x["peak_rss_mb"] for x in runs[m]),
        }
    ref = np.load(OUT / f"{file_tag(backbone)}-b_hooks_fp32.npz")
    for m in methods:
        got = np.load(OUT / f"{file_tag(backbone)}-{m}.npz")
        rel, cos = {}, {}
        for a in ref.files:
            x, y = got[a].astype(np.float64), ref[a].astype(np.float64)
            rel[a] = float(np.abs(x - y).max() / np.abs(y).max())
            cos[a] = float(np.min((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))))
        r = rows[m]
        r.update(max_rel_err=max(rel.values()), min_cosine=min(cos.values()), per_layer_rel_err=rel)
        r["speedup_vs_b"] = round(r["img_per_s"] / rows["b_hooks_fp32"]["img_per_s"], 2)
        r["gflop_per_s"] = round(r["img_per_s"] * gflop, 1)
        if peak:
            r["share_of_bf16_peak"] = round(r["gflop_per_s"] / peak["bf16_gflop_per_s"], 3)
    return {"methods": rows, "gflop_per_image": round(gflop, 3), "repeats": repeats}


def _ov_ok(method: str) -> bool:
    return ENGINE_METHODS[method][1] in _openvino_available()


def _print_engines(backbone: str, t: dict, args, machine: str) -> None:
    print(
        f"\n{backbone} ({args.images} images of 224 px, block-end cut points, batch {args.batch}, "
        f"{t['gflop_per_image']} GFLOP/img; median of {t['repeats']} interleaved runs; {machine})"
    )
    print(
        f"{'method':24s} {'img/s':>8s} {'vs (b)':>7s} {'peak RSS MB':>12s} {'GFLOP/s':>8s} {'bf16 peak':>9s} "
        f"{'max rel err':>12s} {'min cosine':>11s}"
    )
    for m, r in t["methods"].items():
        share = f"{100 * r['share_of_bf16_peak']:8.1f}%" if "share_of_bf16_peak" in r else f"{'':9s}"
        print(
            f"{m:24s} {r['img_per_s']:8.1f} {r['speedup_vs_b']:6.2f}x {r['peak_rss_mb']:12.0f} {r['gflop_per_s']:8.0f} "
            f"{share} {r['max_rel_err']:12.2e} {r['min_cosine']:11.6f}"
        )
    one = t.get("all_cut_points_vs_final_only")
    if one:
        print(
            f"all cut points in one pass: {one['all cut points']} s vs final layer only {one['final layer only']} s "
            f"(ratio {one['ratio']:.3f}, {one['engine']} {one['precision']})"
        )


def _targets(doc: dict) -> list[str]:
    """The issue's targets for ResNet-50, judged with the fidelity verdicts of this run (part
    `large`) where present, else with the table in features/auto.py."""
    from tlmic_feats.features.auto import MEASURED
    from tlmic_feats.runtime.devices import cpu_has_fast_bf16, hardware_class

    t = doc.get("backbones", {}).get("resnet50")
    if not t:
        return []
    hw = hardware_class("cpu")
    verdicts = doc.get("fidelity", {}).get("resnet50", {})

    def validated(engine: str, precision: str) -> bool:
        if precision == "fp32":
            return True  # fp32 engines equal torch's (cosine >= 0.9999, tested)
        v = verdicts.get(f"{engine} {precision}")
        if isinstance(v, dict) and "validated" in v:
            return v["validated"]
        return any(
            r.validated
            for r in MEASURED
            if (r.hardware, r.backbone, r.engine, r.precision) == (hw, "resnet50", engine, precision)
        )

    rows = {m: r for m, r in t["methods"].items() if m in ENGINE_METHODS}
    ok = {m: r for m, r in rows.items() if validated(*ENGINE_METHODS[m])}
    best = max(ok, key=lambda m: ok[m]["img_per_s"])
    best_fp32 = max((m for m in rows if ENGINE_METHODS[m][1] == "fp32"), key=lambda m: rows[m]["img_per_s"])
    lines = [
        f"resnet50, best validated engine: {best} {ok[best]['speedup_vs_b']:.2f}x (b)"
        + (" (target on a CPU with AMX or AVX512-BF16: >= 5x)" if cpu_has_fast_bf16() else ""),
        f"resnet50, best fp32 engine: {best_fp32} {rows[best_fp32]['speedup_vs_b']:.2f}x (b)"
        + ("" if cpu_has_fast_bf16() else " (target on a CPU without bf16: >= 2.5x)"),
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--backbones", default=f"resnet50,densenet121,efficientnet_lite0,{TRANSFORMER}")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of every method (the median is shown)")
    ap.add_argument("--rss-sizes", default="1000,4000")
    ap.add_argument("--pipeline-images", type=int, default=512)
    ap.add_argument(
        "--parts",
        default="engines,peak,rss,pipeline,decode",
        help="which to run: engines, peak, rss, pipeline, decode, demo, large (the last two not by default)",
    )
    ap.add_argument("--large-backbones", default="efficientnet_lite0,resnet50,densenet121")
    ap.add_argument(
        "--candidates", default="torch:bf16,onnx:fp32,openvino:fp32,openvino:bf16", help="engine:precision,..."
    )
    ap.add_argument("--quick", action="store_true", help="engines only, 1 run each")
    args = ap.parse_args()
    parts = {"engines"} if args.quick else set(args.parts.split(","))
    repeats = 1 if args.quick else args.repeats
    if "engines" in parts:
        for f in OUT.glob("*.npz"):
            f.unlink()
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TLMIC_CACHE", str(OUT / "cache"))
    result = OUT / "result.json"
    doc = json.loads(result.read_text()) if result.is_file() else {}
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    doc.update({"machine": machine, "images": args.images, "batch": args.batch, "cut points": "block ends"})
    doc.setdefault("backbones", {})
    if "peak" in parts:
        doc["matmul_peak"] = in_process(_matmul_peak)
        p = doc["matmul_peak"]
        print(
            f"matmul peak ({p['n']}x{p['n']}, {p['threads']} threads): bf16 {p['bf16_gflop_per_s']:.0f} GFLOP/s "
            f"(torch {p['torch_bf16_gflop_per_s']:.0f}, openvino {p.get('openvino_bf16_gflop_per_s', float('nan')):.0f}), "
            f"fp32 {p['torch_fp32_gflop_per_s']:.0f} GFLOP/s (torch)"
        )
    ov = _openvino_available()
    if not ov:
        print("openvino is not installed: rows (f) and (g) are left out (pip install 'tlmic[openvino]')")
    for backbone in args.backbones.split(",") if "engines" in parts else []:
        t = engines_table(backbone, args.images, args.batch, repeats, doc.get("matmul_peak"))
        best = max((m for m in t["methods"] if m in ENGINE_METHODS), key=lambda m: t["methods"][m]["img_per_s"])
        engine, precision = ENGINE_METHODS[best]
        one = in_process(_one_pass_vs_final, backbone, args.images, args.batch, engine, precision)
        t["all_cut_points_vs_final_only"] = {
            **one,
            "engine": engine,
            "precision": precision,
            "ratio": round(one["all cut points"] / one["final layer only"], 3),
        }
        t["best"] = best
        doc["backbones"][backbone] = t
        _print_engines(backbone, t, args, machine)
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
            rss.append(in_process(_extract_run, str(sub), n, "torch", "bf16", -1, True, str(n)))
        doc["extract_rss_vs_n"] = rss
        print("\nfull `extract` (resnet50, all 20 cut points, torch bf16, pixel cache):")
        for r in rss:
            print(
                f"  {r['n']:5d} images: peak RSS {r['peak_rss_mb']:.0f} MB, {r['img_per_s']:.1f} img/s, "
                f"waiting for input {100 * r['input_wait_share']:.2f}% of the time"
            )
    if "pipeline" in parts:
        engine, precision = ("openvino", "bf16" if "bf16" in ov else "fp32") if ov else ("torch", "bf16")
        doc["pipeline"] = pipeline(args.pipeline_images, engine, precision)
        print(
            f"\n`extract --engine {engine} --precision {precision}` (resnet50, all 20 cut points) on "
            f"{args.pipeline_images} 1,000-px JPEGs; {os.cpu_count()} cores; the extraction's time includes "
            "building the engine, any pixel-cache build and starting decode workers (waits for them count as input):"
        )
        for r in doc["pipeline"]:
            print(
                f"  {r['run']:28s} {r['img_per_s']:6.1f} img/s, waiting for input {100 * r['input_wait_share']:5.2f}% "
                f"of the extraction's {r['n'] / r['img_per_s']:6.1f} s (process wall {r['wall_s']:6.1f} s)"
            )
    if "demo" in parts:
        from tlmic_feats.data.phantom import PhantomConfig

        candidates = [tuple(c.split(":")) for c in args.candidates.split(",")]
        doc["fidelity_demo"] = fidelity("demo", PhantomConfig(), ["efficientnet_lite0"], candidates)
        _print_fidelity("demo (60 test images: too few for the criterion)", doc["fidelity_demo"])
    if "large" in parts:
        from tlmic_feats.data.phantom import PhantomConfig

        candidates = [tuple(c.split(":")) for c in args.candidates.split(",")]
        for backbone in args.large_backbones.split(","):  # saved after each: the whole part takes long
            doc.setdefault("fidelity", {}).update(
                fidelity("large", PhantomConfig(n_val=300, n_test=1000), [backbone], candidates)
            )
            result.write_text(json.dumps(doc, indent=1))
            _print_fidelity(f"1,000 test phantoms, {backbone}", {backbone: doc["fidelity"][backbone]})
    if "decode" in parts:
        doc["decode_img_per_s"] = decode_throughput(64)
        print(
            "decode, 2000-px JPEGs to 256 px: "
            + ", ".join(f"{k} {v} img/s" for k, v in doc["decode_img_per_s"].items())
        )
    targets = _targets(doc)
    if targets:
        print("\n" + "\n".join(targets))
    doc["targets"] = targets
    result.write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {OUT / 'result.json'}")


if __name__ == "__main__":
    main()
