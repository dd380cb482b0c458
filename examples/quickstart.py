"""Quick start: tlmic's Python API on your own folder (class subfolders) or CSV.

Placeholder for the notebook-style example; the same steps as the README's command-line quick start:
extract -> probe -> plan and run a study -> verdicts.
"""

from tlmic_feats import (
    DataConfig,
    ExtractConfig,
    ProbeConfig,
    StudyConfig,
    extract_features,
    plan_study,
    run_probes,
    run_study,
)

if __name__ == "__main__":  # decode workers are spawned processes: guard the script's top level
    # class subfolders, or a CSV: DataConfig("labels.csv", label_columns=("diagnosis",))
    data = DataConfig("chest_xray/")
    extracted = extract_features(ExtractConfig(data, backbone="efficientnet_lite0", layers="all"), progress=False)
    probes = run_probes(ProbeConfig(store=extracted.store.path, layers="all"), progress=False)
    print(probes.to_pandas().head())  # per cut point: test AUROC / AUPRC with 95% CIs

    study = StudyConfig(data, backbone="efficientnet_lite0", preset="quick")
    print(plan_study(study))  # the runs, their estimated minutes and disk
    result = run_study(study, progress=False)
    print(result.to_pandas())  # every arm per fraction; the verdicts are in result.out / "verdicts.csv"
