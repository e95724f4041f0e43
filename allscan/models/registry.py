"""The model registry: each network's architecture, input size and preprocessing in one place."""

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

from allscan.models.preprocessing import get_preprocessor


def _builder(name: str, **settings) -> Callable:
    """``allscan.models.architectures.<name>`` with ``settings``, imported on first call: naming the models must
    not load TensorFlow."""

    def build(*args, **kwargs):
        return getattr(import_module("allscan.models.architectures"), name)(*args, **settings, **kwargs)

    return build


@dataclass(frozen=True)
class ModelSpec:
    """How one ensemble member is built, fed and trained by default.

    Attributes:
        name: Registry key, also the model's column suffix in results.
        architecture: Human-readable architecture and paper.
        build: ``build(input_size, weights=None)`` returns an uncompiled Keras model.
        input_size: Default square input side in pixels (chosen to train on a 2-core CPU).
        preprocessing: Name of the function in :mod:`allscan.models.preprocessing`.
        epochs: Default training epochs.
        learning_rate: Default peak learning rate.
        onednn: Whether oneDNN graph optimisations speed this network's training.
    """

    name: str
    architecture: str
    build: Callable
    input_size: int
    preprocessing: str
    epochs: int
    learning_rate: float
    onednn: bool = True

    @property
    def preprocess(self) -> Callable:
        return get_preprocessor(self.preprocessing)


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("resnet50", "ResNet-50 (He et al. 2016)", _builder("resnet50"), 112, "caffe", 9, 1e-3),
        ModelSpec(
            "efficientnet_b3", "EfficientNet-B3 (Tan & Le 2019)", _builder("efficientnet_b3"), 112, "raw", 9, 2e-3
        ),
        ModelSpec("alexnet", "AlexNet (Krizhevsky et al. 2012)", _builder("alexnet"), 128, "symmetric", 14, 1e-3),
        ModelSpec(
            "vgg16", "VGG16-BN: VGG16 (Simonyan & Zisserman 2015) with batch normalisation, as torchvision's vgg16_bn",
            _builder("vgg16"), 112, "caffe", 16, 1e-3, onednn=False
        ),
    )
}

MODEL_NAMES: tuple[str, ...] = tuple(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """Return the registry entry for ``name``, failing with the list of known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}") from None


CELL_REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("vgg16", "VGG16-BN (VGG16 with batch normalisation) at an eighth of its width (8-64 filters),"
                  " 64-px crops", _builder("vgg16", width=0.125), 64, "caffe", 10, 1e-3, onednn=False),
    )
}
"""The cell classifier's member: one of the field architectures, made small for single-cell crops.

One member, not two, for its cost: an image holds about nine cells, and the cells may add at most 40%
to a run. Measured with two-round MIL training on the same crops (threshold and figures on the
validation split; OpenVINO fp32, 2-core CPU): VGG16-BN at a quarter width alone found a blast in
99.3% of val ALL fields (field AUC 0.993) at 0.40 ms a crop; with AlexNet (FC 256, stride 2; 0.94 ms a
crop) in a two-member vote 99.5% (0.993), at 3.3 times the cost, and the run took 93% longer with cells
than without; with AlexNet at the paper's stride 4 (0.26 ms a crop) 99.0% (0.992), below VGG16-BN alone.
At an eighth width, trained 10 epochs in round one (6 left it at field AUC 0.990), it found a blast in
as many val ALL fields as the quarter width (407/411, both in bfloat16, thresholds refitted), field AUC
0.991 against 0.993, at 0.36 against 0.57 ms of CPU a crop: it ships, as the cells' cost is mostly this
member's arithmetic.
"""

CELL_MODEL_NAMES: tuple[str, ...] = tuple(CELL_REGISTRY)
