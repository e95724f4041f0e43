"""Network builders: keras.applications backbones and our AlexNet, each with the same head.

Every model maps a preprocessed RGB batch to the probability of ALL. The head is
global pooling → dropout → one linear unit (the ALL logit, named ``all_logit`` so
Grad-CAM can reach it) → sigmoid.
"""

from pathlib import Path

from allscan._tf import keras

layers = keras.layers

HEAD_DROPOUT = 0.3


def _head(features, dropout: float, name: str):
    x = layers.GlobalAveragePooling2D(name="pool")(features)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    logit = layers.Dense(1, name="all_logit")(x)
    prob = layers.Activation("sigmoid", name="p_all", dtype="float32")(logit)
    return prob


BN_MOMENTUM = 0.9
"""Batch-norm moving-average momentum. Keras' 0.99 lags far behind the weights in short
schedules from scratch, which made validation swing wildly between epochs."""


def _with_head(backbone, input_size: int, name: str, dropout: float):
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    inputs = keras.Input((input_size, input_size, 3), name="image")
    features = backbone(inputs)
    return keras.Model(inputs, _head(features, dropout, name), name=name)


def _backbone_weights(weights: Path | None) -> str | None:
    if weights is None:
        return None
    if not Path(weights).is_file():
        raise FileNotFoundError(f"weights file not found: {weights}")
    return str(weights)


def resnet50(input_size: int, weights: Path | None = None, dropout: float = HEAD_DROPOUT):
    """ResNet-50 (He et al. 2016) from keras.applications, without its ImageNet top."""
    backbone = keras.applications.ResNet50(
        include_top=False, weights=_backbone_weights(weights), input_shape=(input_size, input_size, 3)
    )
    return _with_head(backbone, input_size, "resnet50", dropout)


def efficientnet_b3(input_size: int, weights: Path | None = None, dropout: float = HEAD_DROPOUT):
    """EfficientNet-B3 (Tan & Le 2019) from keras.applications; rescales 0-255 inside."""
    backbone = keras.applications.EfficientNetB3(
        include_top=False, weights=_backbone_weights(weights), input_shape=(input_size, input_size, 3)
    )
    return _with_head(backbone, input_size, "efficientnet_b3", dropout)


VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
"""VGG16's five blocks as (filters, 3×3 convolutions); each ends in 2×2 max pooling."""


def vgg16(input_size: int, weights: Path | None = None, dropout: float = HEAD_DROPOUT, width: float = 1.0):
    """VGG16 with batch normalisation (VGG16-BN, as torchvision's ``vgg16_bn``).

    The 13 convolutions of VGG16 (Simonyan & Zisserman 2015), each followed by batch
    normalisation (Ioffe & Szegedy 2015) and ReLU, with He initialisation (He et al.
    2015). Plain VGG16 from scratch passed almost no signal through 13 un-normalised
    layers (chance with Glorot init, validation AUC 0.876 with He init at 64 px);
    VGG16-BN is the standard way to train it from scratch. The convolutions have no
    bias (the batch norm's shift replaces it). ``weights`` is a Keras weights file of
    this architecture. ``width`` scales every block's filters (the cell classifier uses an eighth).
    """
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = inputs
    he = keras.initializers.HeNormal(seed=0)
    for block, (filters, convs) in enumerate(VGG16_BLOCKS, start=1):
        for i in range(1, convs + 1):
            x = layers.Conv2D(max(8, round(filters * width)), 3, padding="same", use_bias=False, kernel_initializer=he,
                              name=f"block{block}_conv{i}")(x)
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{block}_bn{i}")(x)
            x = layers.ReLU(name=f"block{block}_relu{i}")(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
    model = keras.Model(inputs, _head(x, dropout, "vgg16"), name="vgg16")
    if weights is not None:
        model.load_weights(_backbone_weights(weights))
    return model


def alexnet(input_size: int, weights: Path | None = None, dropout: float = 0.5, fc_width: int = 512):
    """AlexNet after Krizhevsky et al. (2012): 5 convolutions and 3 fully connected layers.

    Batch normalisation replaces local response normalisation (it trains from
    scratch far more reliably), the first stride is 2 rather than 4 for the
    smaller inputs used here, and the FC layers are ``fc_width`` wide instead of 4096.
    """
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = inputs
    for i, (filters, kernel, stride, pool) in enumerate(
        [(64, 11, 2, True), (192, 5, 1, True), (384, 3, 1, False), (256, 3, 1, False), (256, 3, 1, True)],
        start=1,
    ):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        if pool:
            x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    for i in (6, 7):
        x = layers.Dropout(dropout, name=f"dropout{i}")(x)
        x = layers.Dense(fc_width, activation="relu", name=f"fc{i}")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    logit = layers.Dense(1, name="all_logit")(x)
    prob = layers.Activation("sigmoid", name="p_all", dtype="float32")(logit)
    model = keras.Model(inputs, prob, name="alexnet")
    if weights is not None:
        model.load_weights(_backbone_weights(weights))
    return model
