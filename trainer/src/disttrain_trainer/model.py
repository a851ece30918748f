"""The CNN: conv-pool-conv-pool-dense-dropout-softmax."""

from __future__ import annotations

import keras

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)


def build_model(
    filters: tuple[int, int] = (32, 64), kernel: int = 5, dense: int = 256, dropout: float = 0.4
) -> keras.Model:
    """The classic MNIST CNN; the output layer is a float32 softmax (safe under mixed precision)."""
    return keras.Sequential(
        [
            keras.layers.Input(IMAGE_SHAPE, name="image"),
            keras.layers.Conv2D(filters[0], kernel, padding="same", activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Conv2D(filters[1], kernel, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(dense, activation="relu", name="dense"),
            keras.layers.Dropout(dropout, name="dropout"),
            keras.layers.Dense(NUM_CLASSES, name="logits"),
            keras.layers.Activation("softmax", dtype="float32", name="softmax"),
        ],
        name="mnist_cnn",
    )
