"""The peer: the "Text generation with an RNN" tutorial in TensorFlow/Keras, as published.

Same model (Embedding 256 -> GRU 1024 -> Dense), data pipeline (StringLookup, chunks of 101, shuffle
buffer 10,000, batch 64, drop remainder), optimizer (Adam, sparse cross-entropy from logits) and
OneStep generator. Changed only where Keras 3 requires it: GRU.get_initial_state takes a batch size,
and Model.__init__ takes no positional self. Imported only by bench/speed.py (needs `.[bench]`).
"""

from __future__ import annotations

import time

import tensorflow as tf

SEQ_LENGTH, BATCH_SIZE, BUFFER_SIZE = 100, 64, 10000
EMBEDDING_DIM, RNN_UNITS = 256, 1024


def lookups(text: str):
    vocab = sorted(set(text))
    ids_from_chars = tf.keras.layers.StringLookup(vocabulary=list(vocab), mask_token=None)
    chars_from_ids = tf.keras.layers.StringLookup(
        vocabulary=ids_from_chars.get_vocabulary(), invert=True, mask_token=None
    )
    return ids_from_chars, chars_from_ids


def split_input_target(sequence):
    return sequence[:-1], sequence[1:]


def dataset(text: str, ids_from_chars):
    all_ids = ids_from_chars(tf.strings.unicode_split(text, "UTF-8"))
    sequences = tf.data.Dataset.from_tensor_slices(all_ids).batch(SEQ_LENGTH + 1, drop_remainder=True)
    return (
        sequences.map(split_input_target)
        .shuffle(BUFFER_SIZE)
        .batch(BATCH_SIZE, drop_remainder=True)
        .prefetch(tf.data.experimental.AUTOTUNE)
    )


class MyModel(tf.keras.Model):
    def __init__(self, vocab_size, embedding_dim, rnn_units):
        super().__init__()
        self.embedding = tf.keras.layers.Embedding(vocab_size, embedding_dim)
        self.gru = tf.keras.layers.GRU(rnn_units, return_sequences=True, return_state=True)
        self.dense = tf.keras.layers.Dense(vocab_size)

    def call(self, inputs, states=None, return_state=False, training=False):
        x = self.embedding(inputs, training=training)
        if states is None:
            states = self.gru.get_initial_state(tf.shape(x)[0])  # Keras 3: takes the batch size
        x, states = self.gru(x, initial_state=states, training=training)
        x = self.dense(x, training=training)
        return (x, states) if return_state else x


class OneStep(tf.keras.Model):
    def __init__(self, model, chars_from_ids, ids_from_chars, temperature=1.0):
        super().__init__()
        self.temperature = temperature
        self.model = model
        self.chars_from_ids = chars_from_ids
        self.ids_from_chars = ids_from_chars
        skip_ids = self.ids_from_chars(["[UNK]"])[:, None]  # never generate "[UNK]"
        sparse_mask = tf.SparseTensor(
            values=[-float("inf")] * len(skip_ids), indices=skip_ids, dense_shape=[len(ids_from_chars.get_vocabulary())]
        )
        self.prediction_mask = tf.sparse.to_dense(sparse_mask)

    @tf.function
    def generate_one_step(self, inputs, states=None):
        input_chars = tf.strings.unicode_split(inputs, "UTF-8")
        input_ids = self.ids_from_chars(input_chars).to_tensor()
        predicted_logits, states = self.model(inputs=input_ids, states=states, return_state=True)
        predicted_logits = predicted_logits[:, -1, :] / self.temperature
        predicted_logits = predicted_logits + self.prediction_mask
        predicted_ids = tf.squeeze(tf.random.categorical(predicted_logits, num_samples=1), axis=-1)
        return self.chars_from_ids(predicted_ids), states


def build(text: str, seed: int = 0):
    tf.keras.utils.set_random_seed(seed)
    ids_from_chars, chars_from_ids = lookups(text)
    model = MyModel(len(ids_from_chars.get_vocabulary()), EMBEDDING_DIM, RNN_UNITS)
    model.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, ids_from_chars, chars_from_ids


class StepTimer(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times, self.losses = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self.started)
        self.losses.append(float(logs["loss"]))


def train(text: str, steps: int, seed: int = 0):
    """(seconds per step, running loss Keras reports per step, parameter count) for `steps` steps of model.fit."""
    model, ids_from_chars, _ = build(text, seed)
    timer = StepTimer()
    model.fit(dataset(text, ids_from_chars).take(steps), epochs=1, callbacks=[timer], verbose=0)
    return timer.times, timer.losses, model.count_params()


def generate(text: str, length: int, batch: int, repeats: int = 3):
    """Seconds for `length` characters at `batch` with the tutorial's OneStep loop (after a warm-up)."""
    model, ids_from_chars, chars_from_ids = build(text)
    one_step = OneStep(model, chars_from_ids, ids_from_chars)
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        states, next_char, result = None, tf.constant(["ROMEO:"] * batch), []
        for _ in range(length):
            next_char, states = one_step.generate_one_step(next_char, states=states)
            result.append(next_char)
        tf.strings.join(result)
        times.append(time.perf_counter() - started)
    return times[1:]  # the first run traces the tf.function


def versions() -> str:
    return (
        f"tensorflow {tf.__version__}, keras {tf.keras.__version__ if hasattr(tf.keras, '__version__') else '?'}, "
        f"intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}"
    )
