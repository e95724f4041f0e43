"""Stain augmentation in HED space, scale jitter, and the VGG16-BN builder."""

import numpy as np

from allscan.models import architectures
from allscan._tf import keras, tf
from allscan.training.augment import (
    HED_FROM_RGB,
    RGB_FROM_HED,
    augment_image,
    geometry_layers,
    hed_to_rgb,
    rgb_to_hed,
    stain_jitter,
)


def _field(seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 0.95, (16, 16, 3)).astype("float32")


def test_ruifrok_johnston_matrix_and_round_trip():
    assert np.allclose(RGB_FROM_HED @ HED_FROM_RGB, np.eye(3), atol=1e-5)
    rgb = _field()
    assert np.allclose(hed_to_rgb(rgb_to_hed(rgb)).numpy(), rgb, atol=1e-5)


def test_pure_haematoxylin_pixel_lands_on_the_haematoxylin_channel():
    density = 0.8 * RGB_FROM_HED[0]
    rgb = np.exp(-density).astype("float32").reshape(1, 1, 3)
    assert np.allclose(rgb_to_hed(rgb).numpy().reshape(3), [0.8, 0.0, 0.0], atol=1e-5)


def test_stain_jitter_identity_and_haematoxylin_only_change():
    hed = np.random.default_rng(1).uniform(0.05, 0.5, (16, 16, 3)).astype("float32")
    rgb = np.exp(-hed @ RGB_FROM_HED)  # a field of known, positive stain densities (no clipping below)
    same = stain_jitter(rgb, tf.ones(3), tf.zeros(3)).numpy()
    assert np.allclose(same, rgb, atol=1e-5)
    darker = stain_jitter(rgb, tf.constant([1.5, 1.0, 1.0]), tf.zeros(3))
    hed_before, hed_after = rgb_to_hed(rgb).numpy(), rgb_to_hed(darker).numpy()
    assert np.allclose(hed_after[..., 1:], hed_before[..., 1:], atol=1e-4)  # eosin and DAB untouched
    assert np.allclose(hed_after[..., 0], 1.5 * hed_before[..., 0], atol=1e-4)


def test_augment_image_stays_in_range_and_varies():
    image = (_field(2) * 255).astype("uint8")
    tf.random.set_seed(0)
    views = [augment_image(image).numpy() for _ in range(4)]
    for view in views:
        assert view.dtype == np.float32 and view.shape == image.shape
        assert view.min() >= 0.0 and view.max() <= 255.0
    assert not np.allclose(views[0], views[1])


def test_scale_jitter_reaches_a_quarter_either_way():
    zoom = geometry_layers(seed=0).layers[0]
    assert zoom.height_factor == (-0.25, 0.25)
    batch = np.stack([(_field(i) * 255) for i in range(8)])
    out = geometry_layers(seed=0)(batch, training=True).numpy()
    assert out.shape == batch.shape


def test_vgg16_bn_has_batch_norm_after_every_convolution():
    model = architectures.vgg16(32)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 13
    for conv in convs:
        following = model.get_layer(conv.name.replace("conv", "bn"))
        assert isinstance(following, keras.layers.BatchNormalization)
        assert following.input is conv.output
        assert not conv.use_bias
    assert model.get_layer("all_logit") and model.get_layer("pool")
    assert model.name == "vgg16" and model.output_shape == (None, 1)
    p = model(np.zeros((2, 32, 32, 3), "float32"), training=False).numpy()
    assert p.shape == (2, 1) and np.all((p > 0) & (p < 1))


def test_vgg16_bn_trains_a_step_with_signal_reaching_the_first_layer():
    model = architectures.vgg16(32)
    x = np.random.default_rng(0).normal(0, 50, (4, 32, 32, 3)).astype("float32")
    with tf.GradientTape() as tape:
        p = model(x, training=True)
        loss = tf.reduce_mean(keras.losses.binary_crossentropy(tf.constant([[0.0], [1.0], [0.0], [1.0]]), p))
    grads = dict(zip([v.path for v in model.trainable_variables], tape.gradient(loss, model.trainable_variables)))
    assert float(tf.reduce_max(tf.abs(grads["block1_conv1/kernel"]))) > 1e-6
