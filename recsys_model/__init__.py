"""The TensorFlow recommender: data, two-tower model, training, evaluation and the top-k pyfunc that serves it."""
