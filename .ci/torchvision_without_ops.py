"""Lets PyPI's torchvision import beside a CPU build of torch; installed by `make test-oldest` only.

PyPI's torchvision wheels link their C++ operators against torch's CUDA libraries. Beside a CPU
build of torch (the torch 2.13.0 this machine has is one) that library does not load, which
torchvision tolerates (its operators then raise "Couldn't load custom C++ ops" when called), but
its `_meta_registrations` module registers fake kernels for `torchvision::nms` and `::qnms`
without checking that they exist, so `import torchvision` fails with "operator torchvision::nms
does not exist" (pytorch/vision#9337; the fix, guarding those two registrations as the others
are, is pytorch/vision#9649). This hook declares the two operators' schemas, without kernels,
just before that module runs, and only when torchvision's operators did not load: the import
finishes and any call of torchvision's C++ operators still fails loudly. tlmic calls none of
them (nms, roi_align, deform_conv2d, torchvision.io's decoders); it uses torchvision's models,
weights, transforms and feature extraction, which are Python.
"""

import importlib.abc
import sys

SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


class _BeforeMetaRegistrations(importlib.abc.MetaPathFinder):
    done = False

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision._meta_registrations" and not self.done:
            self.done = True
            import torch
            import torchvision.extension

            if not torchvision.extension._has_ops():
                for schema in SCHEMAS:
                    name_, _, signature = schema.partition("(")
                    torch.library.define(f"torchvision::{name_}", "(" + signature)
        return None  # the module itself is imported as usual


sys.meta_path.insert(0, _BeforeMetaRegistrations())
