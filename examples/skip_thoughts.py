"""Skip-thought sentence encoders (Kiros et al. 2015) with layer-normalized recurrent cells.

The encoder reads a sentence; two decoders, conditioned on the encoder's final state (the
"thought vector"), predict the previous and the next sentence word by word. Ba, Kiros & Hinton
(2016, Table 3) trained this model with a layer-normalized GRU encoder and got better sentence
vectors in fewer updates; this script trains it on contiguous text and writes an encoder that
turns raw sentences into vectors (`examples/skip_thoughts_eval.py` probes them).

    python examples/skip_thoughts.py --data-dir ../shared/tensorflow_datasets \\
        --cell layer_norm_gru --epochs 10 --output-dir runs/skip_thoughts/layer_norm_gru

Reads top to bottom: arguments, data (documents -> sentences -> triples), model, training,
report, export. An interrupted run resumes from its last finished epoch when run again with
the same command (`keras.callbacks.BackupAndRestore` in OUTPUT_DIR/backup).

Outputs in --output-dir: `encoder.keras` (string -> vector), `saved_model/<version>/` (the same
encoder for TF Serving), `history.csv` (loss and perplexity per epoch), `perplexity.png`.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

if __package__ in (None, ""):  # run as a script: make `examples.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

import keras_recnorm  # noqa: E402
from keras_recnorm.export import export_saved_model  # noqa: E402
from examples.common import arguments, distribute, text_data, tfds_data  # noqa: E402
from examples.common.arguments import UsageError  # noqa: E402
from examples.common.cells import cell_option, names, recurrent_layer  # noqa: E402
from examples.common.plotting import plot_curves  # noqa: E402
from examples.common.sentences import build_triples, split_sentences  # noqa: E402

CELLS = names()  # every recurrent layer of examples/common/cells.py can encode

# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def build_parser():
    parser = arguments.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = parser.add_argument_group("corpus")
    data.add_argument(
        "--dataset", default="tiny_shakespeare",
        help="TFDS dataset with a text feature; each example is one document (default: "
             "%(default)s, one document per split; pg19, one per book, is the closest TFDS has "
             "to BookCorpus: use --text-key book_text and --max-documents).")
    data.add_argument("--data-dir", default=None,
                      help="TFDS data_dir holding the prepared dataset (default: TFDS's own).")
    data.add_argument("--text-key", default=None,
                      help="Text feature of --dataset (found automatically when there is one).")
    data.add_argument("--train-split", default=None,
                      help="TFDS split to train on (default: train).")
    data.add_argument("--eval-split", default=None,
                      help="TFDS split for validation perplexity (default: validation, else test).")
    data.add_argument("--max-documents", type=arguments.positive_int, default=None,
                      help="Read at most this many documents per split (pg19 books are large; "
                           "default: all).")
    data.add_argument(
        "--text-files", nargs="+", type=arguments.existing_file, default=None, metavar="FILE",
        help="Train on local UTF-8 (or Latin-1) text files instead of TFDS; each file is one "
             "document, and the last --valid-fraction of its sentences is held out.")
    data.add_argument("--valid-fraction", type=arguments.proper_fraction, default=0.1,
                      help="With --text-files: the share of each file's sentences, at its end, "
                           "used for validation (default: %(default)s).")
    data.add_argument("--keep-labels", action="store_true",
                      help="Keep speaker labels (a paragraph's first line such as 'First "
                           "Citizen:'), which are dropped by default; see "
                           "examples/common/sentences.py for the splitting rule.")

    model = parser.add_argument_group("model (Kiros et al. 2015's values in brackets)")
    model.add_argument("--cell", **cell_option(
        CELLS, default="layer_norm_gru",
        help="Encoder RNN; its final hidden state is the thought vector (default: "
             "%(default)s)"))
    model.add_argument(
        "--units", type=arguments.positive_int, default=256,
        help="Encoder and decoder units (default: %(default)s) [2400]. The default is sized "
             "for a CPU: a few minutes per epoch of tiny_shakespeare on two cores. Use 2400 "
             "with a GPU and a book-sized corpus.")
    model.add_argument("--vocab-size", type=arguments.positive_int, default=20000,
                       help="TextVectorization vocabulary size, padding and OOV included "
                            "(default: %(default)s) [20000].")
    model.add_argument("--embedding-dim", type=arguments.positive_int, default=620,
                       help="Word embedding size, shared by encoder and decoders "
                            "(default: %(default)s) [620].")
    model.add_argument("--max-length", type=arguments.positive_int, default=30,
                       help="Words kept per sentence in training (default: %(default)s) [30]; "
                            "also the number of per-step statistics of the batch-normalized "
                            "encoders (batch_norm_*).")

    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=arguments.positive_int, default=10,
                       help="Passes over the triples (default: %(default)s).")
    train.add_argument("--batch-size", type=arguments.positive_int, default=64,
                       help="Triples per update (default: %(default)s) [64].")
    train.add_argument("--learning-rate", type=arguments.positive_float, default=1e-3,
                       help="Adam step size (default: %(default)s).")
    train.add_argument("--clipnorm", type=arguments.positive_float, default=5.0,
                       help="Clip the gradient of each weight to this norm, Keras's clipnorm "
                            "(default: %(default)s) [Kiros et al. clip the global norm at 5].")
    train.add_argument("--steps-per-epoch", type=arguments.positive_int, default=None,
                       help="Updates per epoch (default: one pass over the triples).")
    train.add_argument("--seed", type=int, default=1234,
                       help="Seed for weights and shuffling (default: %(default)s).")
    train.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                       help="Keras fit verbosity: 1 = progress bar (default), 2 = one line per "
                            "epoch, 0 = silent.")

    out = parser.add_argument_group("outputs")
    out.add_argument("--output-dir", default=None,
                     help="Where outputs and the resume checkpoint go "
                          "(default: runs/skip_thoughts/CELL).")
    out.add_argument("--export-version", type=arguments.positive_int, default=None,
                     help="SavedModel version directory (default: one more than the largest "
                          "already in OUTPUT_DIR/saved_model, 1 if none).")
    out.add_argument("--no-export-check", action="store_true",
                     help="Skip reloading the SavedModel in a fresh process to compare its "
                          "vectors with the Keras encoder's (saves ~10 s).")
    distribute.add_arguments(parser)
    return parser


# --------------------------------------------------------------------------------------------
# Data: documents -> sentences -> token ids -> (previous, current, next) triples
# --------------------------------------------------------------------------------------------


def load_documents(args):
    """Returns (train_documents, valid_documents): lists of document strings."""
    if args.text_files:  # validation is cut from each file's sentences
        return [text_data.read_text(path) for path in args.text_files], None
    builder = tfds_data.ensure_available(args.dataset, args.data_dir,
                                         local_option="--text-files")
    text_key, _ = tfds_data.find_text_and_label(builder.info.features, args.text_key)
    splits = tfds_data.choose_splits(builder.info, args.train_split, args.eval_split)

    def load(split):
        return tfds_data.load_text_split(args.dataset, split, args.data_dir, text_key, None,
                                         limit=args.max_documents, download=True)

    return load(splits.train), load(splits.eval)


def sentence_documents(args, train_texts, valid_texts):
    """Splits documents into sentences; cuts validation from --text-files documents."""
    drop = not args.keep_labels
    train = [split_sentences(text, drop_labels=drop) for text in train_texts]
    if valid_texts is not None:
        valid = [split_sentences(text, drop_labels=drop) for text in valid_texts]
    else:  # hold out the end of every file: triples never span the cut
        cuts = [len(doc) - int(round(len(doc) * args.valid_fraction)) for doc in train]
        valid = [doc[cut:] for doc, cut in zip(train, cuts)]
        train = [doc[:cut] for doc, cut in zip(train, cuts)]
    return train, valid


def make_vectorizer(vocab_size, vocabulary=None):
    """Lower-cases, strips punctuation, splits on whitespace; id 0 = padding, 1 = OOV."""
    return keras.layers.TextVectorization(
        max_tokens=vocab_size, standardize="lower_and_strip_punctuation",
        split="whitespace", output_mode="int", vocabulary=vocabulary, name="vectorizer")


def vectorize(vectorizer, sentences, max_length, chunk=4096):
    """Token ids of each sentence, truncated to max_length and zero-padded: (n, max_length)."""
    ids = np.zeros((len(sentences), max_length), np.int32)
    for start in range(0, len(sentences), chunk):
        block = np.asarray(vectorizer(sentences[start:start + chunk]))[:, :max_length]
        ids[start:start + len(block), :block.shape[1]] = block
    return ids


def index_triples(vectorizer, documents, max_length):
    """Token ids of all sentences with at least one word, and their triples.

    A sentence that has no word left after standardization ("--", "!") is removed before
    the triples are built, so its neighbours become each other's neighbours.
    """
    flat = [sentence for document in documents for sentence in document]
    ids = vectorize(vectorizer, flat, max_length)
    keep = ids[:, 0] != 0
    kept_documents, offset = [], 0
    for document in documents:
        rows = np.flatnonzero(keep[offset:offset + len(document)]) + offset
        kept_documents.append(list(rows))
        offset += len(document)
    rows, triples = build_triples(kept_documents)
    return ids[np.asarray(rows, np.int64)] if rows else ids[:0], triples


def make_dataset(ids, triples, eos_id, batch_size, *, shuffle, seed, repeat=False,
                 fixed_shape=False):
    """Batches of ({current, previous_in, next_in}, targets), grouped by sentence length.

    Decoders are teacher-forced: the input is EOS followed by the sentence, the target is the
    sentence followed by EOS. Targets of both decoders are concatenated along time (previous
    first), matching the model's output; 0 marks padding. As Kiros et al.'s homogeneous
    batches, triples of similar length are batched together (buckets of 5 words by their
    longest sentence) and each batch is padded only to its own longest sentence: most
    sentences are short, and the vocabulary softmax over padding would cost more than the
    words. With `repeat`, the triples are reshuffled and served again without end (for
    `fit(steps_per_epoch=...)`). With `fixed_shape` (`--distribute jax`), every batch
    has `batch_size` triples padded to `max_length` words, without buckets: JAX shards each
    batch over its devices and processes (it must be whole, of a size Keras can read from
    the pipeline), and compiles the step once for one shape; the last partial batch is
    left out.
    """
    table = tf.constant(ids)
    sentence_lengths = np.count_nonzero(ids, axis=1)
    longest = sentence_lengths[triples].max(axis=1) if len(triples) else np.zeros(0, np.int64)

    def trim(rows):
        if fixed_shape:
            return rows
        length = tf.reduce_max(tf.math.count_nonzero(rows, axis=1, dtype=tf.int32))
        return rows[:, :tf.maximum(length, 1)]

    def decoder_pair(rows):
        rows = trim(rows)
        batch = tf.shape(rows)[0]
        lengths = tf.math.count_nonzero(rows, axis=1, dtype=tf.int32)
        eos = tf.fill([batch, 1], tf.constant(eos_id, tf.int32))
        inputs = tf.concat([eos, rows], axis=1)
        padded = tf.concat([rows, tf.zeros([batch, 1], tf.int32)], axis=1)
        targets = padded + eos_id * tf.one_hot(lengths, tf.shape(padded)[1], dtype=tf.int32)
        return inputs, targets

    def to_batch(index, _):
        current = trim(tf.gather(table, index[:, 1]))
        previous_in, previous_out = decoder_pair(tf.gather(table, index[:, 0]))
        next_in, next_out = decoder_pair(tf.gather(table, index[:, 2]))
        inputs = {"current": current, "previous_in": previous_in, "next_in": next_in}
        return inputs, tf.concat([previous_out, next_out], axis=1)

    dataset = tf.data.Dataset.from_tensor_slices((triples.astype(np.int64), longest))
    if shuffle:
        dataset = dataset.shuffle(len(triples), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    if fixed_shape:
        return dataset.batch(batch_size, drop_remainder=True).map(to_batch).prefetch(2)
    boundaries = list(range(5, ids.shape[1] + 1, 5)) or [ids.shape[1]]
    dataset = dataset.bucket_by_sequence_length(
        lambda index, length: tf.cast(length, tf.int32), boundaries,
        [batch_size] * (len(boundaries) + 1))
    if not repeat:  # tell Keras the number of batches: a progress bar with a total from epoch 1
        per_bucket = np.bincount(np.searchsorted(boundaries, longest, side="right"),
                                 minlength=len(boundaries) + 1)
        batches = int(np.sum(-(-per_bucket // batch_size)))
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    return dataset.map(to_batch).prefetch(2)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


class ConditionOnThought(keras.layers.Layer):
    """Concatenates the thought vector (batch, units) to every step of (batch, time, dim).

    Kiros et al. condition each decoder by adding C·thought to its gate and candidate
    pre-activations at every step; a GRU whose input is [word; thought] computes exactly that
    (its kernel's thought rows are C). The words' padding mask passes through.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs):
        words, thought = inputs
        steps = ops.shape(words)[1]
        tiled = ops.repeat(ops.expand_dims(thought, 1), steps, axis=1)
        return ops.concatenate([words, ops.cast(tiled, words.dtype)], axis=-1)

    def compute_mask(self, inputs, mask=None):
        return None if mask is None else mask[0]

    def compute_output_shape(self, input_shapes):
        words, thought = input_shapes
        return (*words[:-1], words[-1] + thought[-1])


def build_models(vocab_size, args):
    """Returns (training model, token encoder): ids -> logits of both decoders; ids -> vector.

    As in Kiros et al.'s code, the encoder and both decoders share the word embeddings, and
    the two decoders (plain GRUs, so that comparisons isolate the encoder) share the output
    projection over the vocabulary. Id `vocab_size`, one past the vectorizer's vocabulary, is
    EOS: the decoders' first input and last target.
    """
    embedding = keras.layers.Embedding(vocab_size + 1, args.embedding_dim, mask_zero=True,
                                       name="word_embedding")
    # The encoder returns its final hidden state h, the thought vector. A batch-normalized
    # layer leaves padded sentences out of its per-step statistics, which it keeps for
    # `max_length` steps (longer sentences use the last step's).
    rnn = recurrent_layer(args.cell, args.units, max_timesteps=args.max_length,
                          name="encoder_rnn")

    tokens = keras.Input((None,), dtype="int32", name="tokens")
    token_encoder = keras.Model(tokens, rnn(embedding(tokens)), name="token_encoder")

    current = keras.Input((None,), dtype="int32", name="current")
    previous_in = keras.Input((None,), dtype="int32", name="previous_in")
    next_in = keras.Input((None,), dtype="int32", name="next_in")
    thought = token_encoder(current)
    projection = keras.layers.Dense(vocab_size + 1, name="vocabulary_projection")
    logits = []
    for name, words in (("previous_decoder", previous_in), ("next_decoder", next_in)):
        conditioned = ConditionOnThought(name=f"{name}_input")([embedding(words), thought])
        decoded = keras.layers.GRU(args.units, return_sequences=True, name=name)(conditioned)
        logits.append(projection(decoded))
    both = keras.layers.Concatenate(axis=1, name="both_decoders")(logits)
    model = keras.Model({"current": current, "previous_in": previous_in, "next_in": next_in},
                        both, name="skip_thoughts")
    return model, token_encoder


class SummedCrossEntropy(keras.losses.Loss):
    """Cross-entropy summed over the non-padding words of both decoders, averaged over triples.

    Kiros et al. sum the negative log-likelihood over the words of both decoders. Reduction
    "sum" with each word's loss divided by the batch size gives that sum per triple, whether
    or not Keras also applies the decoders' padding mask (it is the same mask).
    """

    def __init__(self, name="summed_cross_entropy"):
        super().__init__(name=name, reduction="sum")

    def call(self, y_true, y_pred):
        nll = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
        words = ops.cast(ops.not_equal(y_true, 0), nll.dtype)
        return nll * words / ops.cast(ops.shape(y_true)[0], nll.dtype)


class Perplexity(keras.metrics.Metric):
    """exp(mean negative log-likelihood per word) over the non-padding words seen."""

    def __init__(self, name="perplexity", **kwargs):
        super().__init__(name=name, **kwargs)
        self.nll = self.add_variable((), initializer="zeros", name="nll")
        self.words = self.add_variable((), initializer="zeros", name="words")

    def update_state(self, y_true, y_pred, sample_weight=None):
        nll = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
        words = ops.cast(ops.not_equal(y_true, 0), "float32")
        self.nll.assign_add(ops.sum(ops.cast(nll, "float32") * words))
        self.words.assign_add(ops.sum(words))

    def result(self):
        return ops.exp(ops.divide_no_nan(self.nll, self.words))


def string_encoder(vectorizer, token_encoder):
    """Raw sentences (batch,) string -> thought vectors (batch, units)."""
    sentences = keras.Input((), dtype="string", name="sentences")
    return keras.Model(sentences, token_encoder(vectorizer(sentences)), name="skip_thought_encoder")


# --------------------------------------------------------------------------------------------
# Report helpers
# --------------------------------------------------------------------------------------------


def read_history(path):
    """Rows of history.csv by epoch; a re-run epoch (resume after a crash) keeps its last row."""
    by_epoch = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            by_epoch[int(row["epoch"])] = {k: float(v) for k, v in row.items() if k != "epoch"}
    return [by_epoch[e] for e in sorted(by_epoch)]


def run(args, extra_callbacks=()):
    setup = distribute.configure(args)  # before TensorFlow or JAX start
    if setup.mode != "none":
        print(f"--distribute {setup.mode}: {setup.describe()}")
    output_dir = setup.output_dir(args.output_dir or Path("runs", "skip_thoughts", args.cell))
    backup_dir = output_dir / "backup"
    vocabulary_path = backup_dir / "vocabulary.txt"
    history_path = output_dir / "history.csv"
    resuming = (backup_dir / "training_metadata.json").exists()

    # ---- data --------------------------------------------------------------------------
    train_texts, valid_texts = load_documents(args)
    train_docs, valid_docs = sentence_documents(args, train_texts, valid_texts)
    train_sentences = [s for doc in train_docs for s in doc]
    if len(train_sentences) < 3:
        raise UsageError(
            f"the training text has {len(train_sentences)} sentence(s); skip-thoughts needs at "
            "least 3 contiguous sentences in one document.")

    keras.utils.set_random_seed(args.seed)
    if resuming and vocabulary_path.exists():  # the checkpoint's weights index this vocabulary
        vocabulary = vocabulary_path.read_text(encoding="utf-8").split("\n")
        vectorizer = make_vectorizer(args.vocab_size, vocabulary)
    else:
        vectorizer = make_vectorizer(args.vocab_size)
        vectorizer.adapt(tf.data.Dataset.from_tensor_slices(train_sentences).batch(4096))
    vocab_size = vectorizer.vocabulary_size()
    eos_id = vocab_size

    train_ids, train_triples = index_triples(vectorizer, train_docs, args.max_length)
    valid_ids, valid_triples = index_triples(vectorizer, valid_docs, args.max_length)
    if len(train_triples) == 0:
        raise UsageError("no document has 3 or more sentences with words; nothing to train on.")
    print(f"{len(train_triples)} training triples, {len(valid_triples)} validation triples, "
          f"vocabulary {vocab_size} words (+ EOS).")
    fixed = setup.mode == "jax"
    if fixed and min(len(train_triples), len(valid_triples) or np.inf) < args.batch_size:
        raise UsageError(f"--distribute jax needs whole batches, and a split has fewer than "
                         f"--batch-size {args.batch_size} triples: use a smaller one.")
    train_data = make_dataset(train_ids, train_triples, eos_id, args.batch_size, shuffle=True,
                              seed=args.seed, repeat=args.steps_per_epoch is not None,
                              fixed_shape=fixed)
    valid_data = (make_dataset(valid_ids, valid_triples, eos_id, args.batch_size,
                               shuffle=False, seed=args.seed, fixed_shape=fixed)
                  if len(valid_triples) else None)

    # ---- model -------------------------------------------------------------------------
    with setup.scope():
        model, token_encoder = build_models(vocab_size, args)
        model.compile(
            optimizer=keras.optimizers.Adam(args.learning_rate, clipnorm=args.clipnorm),
            loss=SummedCrossEntropy(),
            metrics=[Perplexity()],
        )

    # ---- training ----------------------------------------------------------------------
    output_dir.mkdir(parents=True, exist_ok=True)
    if not resuming:
        backup_dir.mkdir(exist_ok=True)
        vocabulary_path.write_text("\n".join(vectorizer.get_vocabulary()), encoding="utf-8")
        history_path.unlink(missing_ok=True)
    else:
        print(f"Resuming from the checkpoint in {backup_dir}.")
    callbacks = [
        keras.callbacks.BackupAndRestore(str(backup_dir)),
        keras.callbacks.CSVLogger(str(history_path), append=True),
        *extra_callbacks,
    ]
    model.fit(train_data, validation_data=valid_data, epochs=args.epochs,
              steps_per_epoch=args.steps_per_epoch, callbacks=callbacks, verbose=args.verbose,
              shuffle=False)  # train_data reshuffles itself every epoch

    # ---- report ------------------------------------------------------------------------
    history = read_history(history_path)
    curves = {"train": [row["perplexity"] for row in history]}
    if valid_data is not None:
        curves["validation"] = [row["val_perplexity"] for row in history]
    plot_curves(curves, output_dir / "perplexity.png",
                title=f"Skip-thoughts, {args.cell} encoder ({args.units} units)",
                ylabel="perplexity (both decoders)")
    for name, values in curves.items():
        print(f"{name} perplexity by epoch: " + " ".join(f"{v:.1f}" for v in values))

    # ---- export ------------------------------------------------------------------------
    encoder = string_encoder(vectorizer, token_encoder)
    encoder.save(output_dir / "encoder.keras")
    if keras.backend.backend() != "tensorflow":  # (--distribute jax) TensorFlow writes those
        print(f"Wrote {output_dir / 'encoder.keras'}, {history_path}, "
              f"{output_dir / 'perplexity.png'}. To export for TF Serving: KERAS_BACKEND="
              f"tensorflow python export/export_model.py {output_dir / 'encoder.keras'} "
              f"{output_dir / 'saved_model'}")
        return 0
    saved_model = export_saved_model(encoder, output_dir / "saved_model", args.export_version,
                                     overwrite=True, verify=not args.no_export_check)
    print(f"Wrote {output_dir / 'encoder.keras'}, {saved_model}, {history_path}, "
          f"{output_dir / 'perplexity.png'}.")
    return 0

@arguments.one_line_errors(distribute.DistributeError, tfds_data.DatasetUnavailable,
                           tfds_data.FeatureError)
def main(argv=None, *, extra_callbacks=()):
    """Runs the script; returns 0. `extra_callbacks` are added to `fit` (tests use them)."""
    return run(build_parser().parse_args(argv), extra_callbacks)


if __name__ == "__main__":
    sys.exit(main())
