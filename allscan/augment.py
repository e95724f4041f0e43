"""Training-time augmentation on uint8 RGB images (geometry and stain colour)."""

from allscan._tf import keras, tf


def augment_image(image, seed_offset: int = 0):
    """Random flips, 90° rotations and mild brightness/contrast/hue/saturation jitter.

    Returns a float32 image in 0-255. Colour jitter is kept small: on this data
    strong brightness/contrast jitter measurably hurt accuracy, while stain (hue,
    saturation) jitter guards against one lab's tint being learnt as the class.
    """
    x = tf.cast(image, tf.float32) / 255.0
    x = tf.image.random_flip_left_right(x)
    x = tf.image.random_flip_up_down(x)
    x = tf.image.rot90(x, k=tf.random.uniform((), 0, 4, dtype=tf.int32))
    x = tf.image.random_hue(x, 0.03)
    x = tf.image.random_saturation(x, 0.85, 1.15)
    x = tf.image.random_brightness(x, 0.04)
    x = tf.image.random_contrast(x, 0.92, 1.08)
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def geometry_layers(seed: int):
    """Small random zoom and translation, applied per batch."""
    return keras.Sequential(
        [
            keras.layers.RandomZoom(0.1, fill_mode="reflect", seed=seed),
            keras.layers.RandomTranslation(0.06, 0.06, fill_mode="reflect", seed=seed + 1),
        ],
        name="augment_geometry",
    )
