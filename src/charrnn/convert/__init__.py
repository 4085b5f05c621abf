"""Convert models from elsewhere into charrnn runs: the TensorFlow tutorial's Keras model and checkpoints."""
