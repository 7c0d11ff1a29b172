"""Keras model builders. Each returns an uncompiled `keras.Model`."""
