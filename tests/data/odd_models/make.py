"""Makes the tiny LiteRT models here, each wrong in one way for kwspot (TensorFlow needed; run from this folder).

Each takes (1, 97, 40) log-mel features like the bundled model; tests pair them with the bundled sidecar.
"""
import numpy as np
import tensorflow as tf

FEATURES = [tf.TensorSpec([1, 97, 40], tf.float32)]


def save(name, fn, signature):
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function(*signature)])
    with open(f"{name}.tflite", "wb") as fh:
        fh.write(converter.convert())


save("intin", tf.function(lambda x: tf.nn.softmax(tf.reduce_mean(tf.cast(x, tf.float32), axis=1)[:, :12])),
     [tf.TensorSpec([1, 97, 40], tf.int32)])
save("out3", tf.function(lambda x: tf.reshape(tf.nn.softmax(tf.reduce_mean(x, axis=1)[:, :12]), [1, 1, 12])), FEATURES)
save("out1d", tf.function(lambda x: tf.nn.softmax(tf.reduce_mean(x, axis=1)[0, :12])), FEATURES)
save("nanout", tf.function(lambda x: tf.reduce_mean(x, axis=1)[:, :12] * np.nan), FEATURES)
save("outint", tf.function(lambda x: tf.cast(tf.reduce_mean(x, axis=1)[:, :12] * 100, tf.int64)), FEATURES)
