"""Sentence classification with LSTM, LN-LSTM and BN-LSTM (or any recurrent layer of
examples/common/cells.py: GRU, LN-GRU, BN-GRU, ...); export for serving.

Trains `TextVectorization → Embedding(mask_zero) → recurrent layer(s) → Dense` on a text
classification dataset from TensorFlow Datasets (`--dataset glue/sst2`, `imdb_reviews`,
`ag_news_subset --text-key description`, ...) or on local files (`--train-file`, one
`label sentence` per line or a `sentence<TAB>label` TSV with a header), and compares the
recurrent cells with `--cell all` under the same seed, data and budget.

    python examples/sentence_classification.py --dataset glue/sst2 --output-dir runs/sst2
    python examples/sentence_classification.py --cell all \\
        --train-file ../shared/data/sentences/stsa.binary.train \\
        --valid-file ../shared/data/sentences/stsa.binary.dev \\
        --test-file ../shared/data/sentences/stsa.binary.test --output-dir runs/sst2-local
    python examples/sentence_classification.py --cell all --cv 10 \\
        --train-file ../shared/data/sentences/rt-polarity.all --output-dir runs/mr

Writes to `--output-dir`: metrics.json, history.csv, validation_accuracy.png and
training_loss.png (one curve per cell), model.keras (the cell with the best validation
accuracy; it takes raw sentences) and saved_model/<version>/ (TF Serving layout, raw
sentences in, class probabilities out). With `--cv`, the models of the folds are not kept.
`--seeds N` trains every cell with N seeds and reports mean ± std (small datasets: one run
is within noise of another); the exported model is the run with the best validation accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

if __package__ in (None, ""):  # run as a script: make `examples` and `keras_recnorm` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from examples.common import arguments, distribute, text_data, tfds_data  # noqa: E402
from examples.common.arguments import UsageError  # noqa: E402
from examples.common.cells import TITLES, cell_option, lookup, names, recurrent_layer  # noqa: E402

# What --cell all compares; --cell takes any name of examples/common/cells.py.
CELLS = ("lstm", "layer_norm_lstm", "batch_norm_lstm")

# The devices and processes chosen with --distribute (set once, first thing in run()).
setup = distribute.Setup("none")


# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None and False (the help text says what happens then)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser():
    parser = arguments.ArgumentParser(
        description=(
            "Train a sentence classifier whose recurrent layer is an LSTM, a layer-normalized "
            "LSTM or a recurrent batch-normalized LSTM (or GRU, ...), on a TensorFlow Datasets "
            "text classification dataset or on local files; compare the cells (--cell all) and "
            "export the best model as a SavedModel that takes raw sentences."
        ),
        formatter_class=HelpFormatter,
    )
    data = parser.add_argument_group("data: TensorFlow Datasets (used when no --train-file)")
    data.add_argument("--dataset", default="glue/sst2",
                      help="TFDS name, with config after a slash (imdb_reviews, "
                           "ag_news_subset, glue/cola, ...)")
    data.add_argument("--data-dir", default=None,
                      help="TFDS data_dir holding prepared datasets (default: $TFDS_DATA_DIR "
                           "or ~/tensorflow_datasets); nothing is downloaded when the dataset "
                           "is prepared there")
    data.add_argument("--text-key", default=None,
                      help="feature holding the text (default: the only Text feature, or an error "
                           "listing the candidates)")
    data.add_argument("--label-key", default=None,
                      help="feature holding the label (default: the only ClassLabel feature)")
    data.add_argument("--train-split", default=None,
                      help="training split, TFDS slicing allowed (default: train)")
    data.add_argument("--eval-split", default=None,
                      help="split for validation and early stopping (default: validation, "
                           "else test)")
    data.add_argument("--test-split", default=None,
                      help="split scored at the end (default: test, when distinct from the "
                           "evaluation split and labeled; GLUE's test labels are all -1)")
    data.add_argument("--max-examples", type=arguments.positive_int, default=None,
                      help="use at most this many examples of each split or file (quick runs; "
                           "a random subset of local files, the first ones of TFDS splits)")

    local = parser.add_argument_group("data: local files (one 'label sentence' per line, or a "
                                      "TSV with a 'sentence<TAB>label' header)")
    local.add_argument("--train-file", type=arguments.existing_file, default=None,
                       help="training sentences")
    local.add_argument("--valid-file", type=arguments.existing_file, default=None,
                       help="validation sentences (default: hold out --valid-fraction of "
                            "the training sentences)")
    local.add_argument("--test-file", type=arguments.existing_file, default=None,
                       help="test sentences (optional)")
    local.add_argument("--cv", type=arguments.positive_int, default=None, metavar="K",
                       help="K-fold stratified cross-validation on --train-file alone (MR, "
                            "CR, SUBJ, MPQA style); reports mean ± std test accuracy")
    local.add_argument("--valid-fraction", type=arguments.fraction, default=0.1,
                       help="fraction of the training sentences held out for validation when "
                            "there is no --valid-file (and in every --cv fold)")

    model = parser.add_argument_group("model")
    model.add_argument("--cell", **cell_option(
        names(), default="layer_norm_lstm", all_cells=True,
        help="recurrent layer: lstm is keras.layers.LSTM, layer_norm_lstm "
             "keras_recnorm.LayerNormLSTM, batch_norm_lstm keras_recnorm.BatchNormLSTM, and "
             "likewise for the others; 'all' trains lstm, layer_norm_lstm and batch_norm_lstm "
             "with the same seed, data and budget and compares them"))
    model.add_argument("--bidirectional", action="store_true",
                       help="wrap each recurrent layer in keras.layers.Bidirectional")
    model.add_argument("--units", type=arguments.positive_int, default=128,
                       help="units of each recurrent layer (per direction)")
    model.add_argument("--layers", type=arguments.positive_int, default=1,
                       help="number of stacked recurrent layers")
    model.add_argument("--embedding-dim", type=arguments.positive_int, default=128,
                       help="word embedding size (trained from random initialization)")
    model.add_argument("--vocab-size", type=arguments.positive_int, default=20000,
                       help="TextVectorization vocabulary size, padding and OOV tokens "
                            "included; adapted on the training split")
    model.add_argument("--max-length", type=arguments.positive_int, default=50,
                       help="sentences are cut or padded to this many tokens; also the "
                            "batch-normalized layers' max_timesteps")
    model.add_argument("--dropout", type=arguments.fraction, default=0.5,
                       help="dropout rate on the embeddings and before the classifier")

    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=arguments.positive_int, default=10,
                          help="maximum epochs")
    training.add_argument("--batch-size", type=arguments.positive_int, default=32,
                          help="batch size")
    training.add_argument("--learning-rate", type=arguments.positive_float, metavar="RATE",
                          default=1e-3,
                          help="Adam learning rate of Keras's layers (lstm, gru), and of the "
                               "normalized ones unless --normalized-learning-rate is given")
    training.add_argument("--normalized-learning-rate", type=arguments.positive_float, default=None,
                          metavar="RATE",
                          help="Adam learning rate of the normalized layers (layer_norm_*, "
                               "batch_norm_*) only, so that --cell all can give each kind of "
                               "cell its own rate "
                               "(normalization is meant to allow larger rates); default: "
                               "--learning-rate")
    training.add_argument("--layer-norm-learning-rate", type=arguments.positive_float, default=None,
                          metavar="RATE",
                          help="Adam learning rate of the layer-normalized layers (layer_norm_*) "
                               "alone, when it differs from the batch-normalized ones'; default: "
                               "--normalized-learning-rate")
    training.add_argument("--batch-norm-learning-rate", type=arguments.positive_float, default=None,
                          metavar="RATE",
                          help="Adam learning rate of the batch-normalized layers (batch_norm_*) "
                               "alone, when it differs from the layer-normalized ones'; default: "
                               "--normalized-learning-rate")
    training.add_argument("--clip-norm", type=arguments.positive_float, default=None,
                          help="clip each gradient to this L2 norm (Cooijmans et al. clip at "
                               "1.0); default: no clipping")
    training.add_argument("--patience", type=arguments.positive_int, default=3,
                          help="early stopping: epochs without a better validation accuracy "
                               "before stopping; the best epoch's weights are kept")
    training.add_argument("--seed", type=int, default=0,
                          help="seed of weights, shuffling and data splits")
    training.add_argument("--seeds", type=arguments.positive_int, default=1, metavar="N",
                          help="train every cell N times, with the seeds --seed, --seed + 1, "
                               "..., --seed + N - 1 for the weights and the shuffling (the data "
                               "splits keep --seed), and report mean ± std over the seeds: one "
                               "run is within noise of another on small datasets")

    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", default="runs/sentence_classification",
                        help="where metrics.json, history.csv, the plots, model.keras and "
                             "saved_model/ go")
    output.add_argument("--no-export", action="store_true",
                        help="skip model.keras and the SavedModel")
    output.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                        help="Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per "
                             "epoch")
    distribute.add_arguments(parser)
    return parser


def check_arguments(args):
    local_only = [name for name in ("valid_file", "test_file") if getattr(args, name)]
    if local_only and not args.train_file:
        raise UsageError(f"--{local_only[0].replace('_', '-')} needs --train-file.")
    if args.cv is not None:
        if not args.train_file:
            raise UsageError("--cv needs --train-file (cross-validation is for local files).")
        if args.valid_file or args.test_file:
            raise UsageError("--cv uses --train-file alone: drop --valid-file and --test-file.")
        if args.cv < 2:
            raise UsageError(f"--cv expects at least 2 folds, got {args.cv}.")
        if not args.valid_fraction:
            raise UsageError("--cv needs a --valid-fraction above 0 for early stopping.")
        if args.seeds > 1:
            raise UsageError("--cv already averages over folds: drop --seeds, or drop --cv to "
                             "average over seeds.")
    if args.vocab_size < 3:
        raise UsageError(f"--vocab-size expects at least 3 (padding, OOV, one word), "
                         f"got {args.vocab_size}.")


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


class Data:
    """Texts and integer labels of each split; `folds` is set for cross-validation."""

    def __init__(self, source, class_names, train, valid, test=None, folds=None, notes=()):
        self.source = source
        self.class_names = class_names
        self.train, self.valid, self.test = train, valid, test  # (texts, labels) or None
        self.folds = folds  # list of (train, valid, test) triples for --cv
        self.notes = list(notes)


def take(pair, indices):
    texts, labels = pair
    return [texts[i] for i in indices], labels[indices]


def load_tfds(args):
    builder = tfds_data.ensure_available(args.dataset, args.data_dir)
    text_key, label_key = tfds_data.find_text_and_label(
        builder.info.features, args.text_key, args.label_key)
    if label_key is None:
        raise UsageError(f"{args.dataset} has no ClassLabel feature to predict; name the "
                         "label with --label-key.")
    splits = tfds_data.choose_splits(builder.info, args.train_split, args.eval_split,
                                     args.test_split)

    def load(split):
        try:
            return tfds_data.load_text_split(args.dataset, split, args.data_dir, text_key,
                                             label_key, limit=args.max_examples)
        except (ValueError, KeyError) as error:  # unknown split name or bad slicing
            raise UsageError(f"{args.dataset}: can't load split {split!r}: "
                             f"{' '.join(str(error).split())[:200]}") from None

    notes = [f"TFDS {args.dataset}: text {text_key!r}, label {label_key!r}, splits "
             f"train={splits.train!r} eval={splits.eval!r} test={splits.test!r}"]
    train, valid = load(splits.train), load(splits.eval)
    for name, (_, labels) in (("training", train), ("evaluation", valid)):
        if tfds_data.labels_are_unknown(labels):
            raise UsageError(f"the {name} split of {args.dataset} is unlabeled (all -1); "
                             "choose a labeled one with --train-split / --eval-split.")
    test = load(splits.test) if splits.test else None
    if test is not None and tfds_data.labels_are_unknown(test[1]):
        notes.append(f"test split {splits.test!r} is unlabeled (all labels -1): not scored")
        test = None
    names = tfds_data.class_names(builder.info.features, label_key)
    return Data(f"tfds:{args.dataset}", names, train, valid, test, notes=notes)


def read_local(path, args, notes):
    texts, labels, skipped = text_data.read_labeled_sentences(path)
    if skipped:
        notes.append(f"{path}: skipped {skipped} line(s) with a label but no sentence")
    if args.max_examples and args.max_examples < len(texts):
        # A random subset: files such as rt-polarity.all are sorted by label.
        keep = np.sort(np.random.default_rng(args.seed).permutation(len(texts))
                       [:args.max_examples])
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    return text_data.LabeledText(texts, labels)


def load_local(args):
    notes = []
    raw_train = read_local(args.train_file, args, notes)
    names = text_data.class_names_from(raw_train.labels)
    if len(names) < 2:
        raise UsageError(f"{args.train_file} holds a single class ({names[0]}); need two.")

    def encode(raw, path):
        return raw.texts, text_data.encode_labels(raw.labels, names, source=path)

    train = encode(raw_train, args.train_file)
    if args.cv:
        folds = []
        for k, (rest, tested) in enumerate(text_data.stratified_folds(train[1], args.cv,
                                                                       seed=args.seed)):
            fit, held = text_data.split_off(rest, args.valid_fraction, seed=args.seed + k)
            folds.append((take(train, fit), take(train, held), take(train, tested)))
        notes.append(f"{args.cv}-fold stratified CV of {len(train[0])} sentences; "
                     f"{args.valid_fraction:.0%} of each training part held out for "
                     "early stopping")
        return Data(f"file:{args.train_file}", names, None, None, folds=folds, notes=notes)
    if args.valid_file:
        valid = encode(read_local(args.valid_file, args, notes), args.valid_file)
    else:
        if not args.valid_fraction:
            raise UsageError("no --valid-file and --valid-fraction 0: nothing to validate on.")
        fit, held = text_data.split_off(np.arange(len(train[0])), args.valid_fraction,
                                        seed=args.seed)
        train, valid = take(train, fit), take(train, held)
        notes.append(f"validation: {len(held)} sentences held out of --train-file")
    test = (encode(read_local(args.test_file, args, notes), args.test_file)
            if args.test_file else None)
    return Data(f"file:{args.train_file}", names, train, valid, test, notes=notes)


def load_data(args):
    return load_local(args) if args.train_file else load_tfds(args)


# ---------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------


def make_vectorizer(texts, args):
    import keras

    vectorizer = keras.layers.TextVectorization(
        max_tokens=args.vocab_size, output_sequence_length=args.max_length, name="vectorize")
    vectorizer.adapt(np.asarray(texts, dtype=object), batch_size=1024)
    return vectorizer


def build_classifier(cell, vocabulary_size, num_classes, args):
    """Token ids → probabilities. Id 0 is padding: Embedding's mask reaches the RNN."""
    import keras

    tokens = keras.Input(shape=(args.max_length,), dtype="int64", name="tokens")
    x = keras.layers.Embedding(vocabulary_size, args.embedding_dim, mask_zero=True,
                               name="embedding")(tokens)
    x = keras.layers.Dropout(args.dropout, name="embedding_dropout")(x)
    for i in range(args.layers):
        # BatchNormLSTM leaves padded sentences out of its per-step statistics (the mask).
        layer = recurrent_layer(cell, args.units, max_timesteps=args.max_length,
                                return_sequences=i < args.layers - 1, name=f"{cell}_{i + 1}")
        if args.bidirectional:
            layer = keras.layers.Bidirectional(layer, name=f"bidirectional_{i + 1}")
        x = layer(x)
    x = keras.layers.Dropout(args.dropout, name="dropout")(x)
    probabilities = keras.layers.Dense(num_classes, activation="softmax", name="classify")(x)
    return keras.Model(tokens, probabilities, name=f"{cell}_classifier")


def end_to_end(vectorizer, classifier):
    """Raw sentences (a 1-D string tensor) → class probabilities, for saving and serving."""
    import keras

    sentences = keras.Input(shape=(), dtype="string", name="sentences")
    return keras.Model(sentences, classifier(vectorizer(sentences)), name="sentence_classifier")


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


def token_dataset(vectorizer, pair, batch_size, shuffle_seed=None):
    import tensorflow as tf

    texts, labels = pair
    if setup.even_batches and len(texts) < batch_size:
        raise UsageError(f"--distribute jax needs whole batches, and a split of {len(texts)} "
                         f"sentences has none of --batch-size {batch_size}: use a smaller one.")
    # Token ids up front (a vectorizer inside the pipeline hides the batch size, which
    # JAX's multi-process input sharding must know).
    ids = np.asarray(vectorizer(tf.constant(texts, dtype=tf.string)))
    ds = tf.data.Dataset.from_tensor_slices((ids, labels))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(texts), seed=shuffle_seed, reshuffle_each_iteration=True)
    # (Under --distribute jax the batch is sharded over the devices: it must be whole.)
    ds = ds.batch(batch_size, drop_remainder=setup.even_batches)
    return ds.prefetch(tf.data.AUTOTUNE)


def epoch_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def learning_rate_for(cell, args):
    """The most specific rate given: the cell's own, then the normalized cells', then
    --learning-rate."""
    family = lookup(cell).family
    own = {"layer_norm": args.layer_norm_learning_rate,
           "batch_norm": args.batch_norm_learning_rate}.get(family)
    if own is not None:
        return own
    if family is not None and args.normalized_learning_rate is not None:
        return args.normalized_learning_rate
    return args.learning_rate


def train_one(cell, split, vectorizer, num_classes, args, seed):
    """Trains one cell on (train, valid[, test]); returns (classifier, result dict)."""
    import keras

    keras.utils.set_random_seed(seed)  # same initial weights and order for every cell
    train, valid, test = split
    with setup.scope():
        classifier = build_classifier(cell, vectorizer.vocabulary_size(), num_classes, args)
        optimizer = keras.optimizers.Adam(learning_rate_for(cell, args), clipnorm=args.clip_norm)
        classifier.compile(optimizer=optimizer,
                           loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    timer = epoch_timer()
    stopper = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                            patience=args.patience,
                                            restore_best_weights=True)
    valid_ds = token_dataset(vectorizer, valid, args.batch_size)
    history = classifier.fit(
        token_dataset(vectorizer, train, args.batch_size, shuffle_seed=seed),
        validation_data=valid_ds, epochs=args.epochs, callbacks=[timer, stopper],
        shuffle=False,  # the dataset reshuffles itself each epoch, with this run's seed
        verbose=args.verbose)
    curves = {key: [float(v) for v in values] for key, values in history.history.items()}
    val_acc = curves["val_accuracy"]
    best = int(np.argmax(val_acc))
    # The first epoch also traces the graph: leave it out of the speed figure when we can.
    steady = timer.seconds[1:] or timer.seconds
    result = {
        "cell": cell,
        "seed": seed,
        "best_val_accuracy": val_acc[best],
        "best_epoch": best + 1,
        "epochs_trained": len(val_acc),
        "seconds_per_epoch": float(np.mean(steady)),
        "first_epoch_seconds": timer.seconds[0],
        "parameters": int(classifier.count_params()),
        # Read back from the optimizer: the rate this cell was actually trained with.
        "learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
        "history": {**curves, "seconds": timer.seconds},
    }
    if test is not None:
        _, accuracy = classifier.evaluate(token_dataset(vectorizer, test, args.batch_size),
                                          verbose=0)
        result["test_accuracy"] = float(accuracy)
    return classifier, result


def epochs_to_reach(curve, target):
    """First epoch (1-based) whose value reaches `target`, or None."""
    for epoch, value in enumerate(curve, start=1):
        if value >= target - 1e-12:
            return epoch
    return None


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def percent(value):
    return "-" if value is None else f"{100 * value:.1f}"


def print_table(results):
    print()
    print(f"{'cell':<9} {'best val %':>10} {'test %':>7} {'best epoch':>10} "
          f"{'epochs to LSTM best':>19} {'s/epoch':>8} {'lr':>8}")
    for r in results:
        reach = r.get("epochs_to_lstm_best")
        print(f"{TITLES[r['cell']]:<9} {percent(r['best_val_accuracy']):>10} "
              f"{percent(r.get('test_accuracy')):>7} {r['best_epoch']:>10} "
              f"{'-' if reach is None else reach:>19} {r['seconds_per_epoch']:>8.1f} "
              f"{r['learning_rate']:>8.2g}")


def print_cv_table(summary, k):
    print()
    print(f"{'cell':<9} {f'test % ({k} folds)':>18} {'s/epoch':>8}")
    for cell, s in summary.items():
        print(f"{TITLES[cell]:<9} {100 * s['test_accuracy_mean']:>9.1f} ± "
              f"{100 * s['test_accuracy_std']:<5.1f} {s['seconds_per_epoch']:>8.1f}")


def percent_mean_std(stats, key):
    if f"{key}_mean" not in stats:
        return "-"
    return f"{100 * stats[f'{key}_mean']:.1f} ± {100 * stats[f'{key}_std']:.1f}"


def print_seeds_table(summary):
    n = len(next(iter(summary.values()))["runs"])
    print()
    print(f"mean ± std over {n} seeds; epochs listed seed by seed ('-': never reached)")
    print(f"{'cell':<9} {'best val %':>11} {'test %':>11} {'epoch of best':>14} "
          f"{'epochs to LSTM best':>20} {'s/epoch':>8} {'lr':>8}")
    for cell, stats in summary.items():
        best_epochs = " ".join(str(r["best_epoch"]) for r in stats["runs"])
        reach = " ".join("-" if r.get("epochs_to_lstm_best") is None
                         else str(r["epochs_to_lstm_best"]) for r in stats["runs"])
        print(f"{TITLES[cell]:<9} {percent_mean_std(stats, 'best_val_accuracy'):>11} "
              f"{percent_mean_std(stats, 'test_accuracy'):>11} {best_epochs:>14} "
              f"{reach if 'lstm' in summary else '-':>20} "
              f"{stats['seconds_per_epoch']:>8.1f} {stats['learning_rate']:>8.2g}")


def summarize_seeds(results):
    """Mean ± std over the seeds of one cell, and each seed's own figures."""
    summary = summarize_runs(results, ("best_val_accuracy", "test_accuracy"))
    summary["best_epoch_mean"] = float(np.mean([r["best_epoch"] for r in results]))
    summary["runs"] = results
    return summary


def summarize_runs(results, keys):
    """One cell's runs (folds or seeds): mean and std of each of `keys` the runs have, mean
    seconds per epoch, and the learning rate (the same for every run)."""
    summary = {}
    for key in keys:
        if key in results[0]:
            values = np.array([r[key] for r in results])
            summary[f"{key}_mean"] = float(values.mean())
            summary[f"{key}_std"] = float(values.std())
    summary["seconds_per_epoch"] = float(np.mean([r["seconds_per_epoch"] for r in results]))
    summary["learning_rate"] = results[0]["learning_rate"]
    return summary


def mean_curves(per_cell):
    """Per cell, the mean validation accuracy and training loss curves of its runs."""
    return {key: {TITLES[cell]: mean_curve([r["history"][key] for r in results])
                  for cell, results in per_cell.items()}
            for key in ("val_accuracy", "loss")}


def mean_curve(curves):
    """Mean over folds or seeds, epoch by epoch, over the runs that trained that long."""
    longest = max(len(c) for c in curves)
    return [float(np.mean([c[i] for c in curves if len(c) > i])) for i in range(longest)]


def write_history(path, rows):
    fields = ["cell", "seed", "fold", "epoch", "loss", "accuracy", "val_loss", "val_accuracy",
              "seconds"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def history_rows(result, fold=None):
    h = result["history"]
    for i in range(len(h["val_accuracy"])):
        row = {"cell": result["cell"], "seed": result["seed"],
               "fold": "" if fold is None else fold, "epoch": i + 1}
        row.update({key: round(h[key][i], 6) for key in
                    ("loss", "accuracy", "val_loss", "val_accuracy", "seconds") if key in h})
        yield row


def machine():
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}"


# ---------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------


def export(model, output_dir):
    """model.keras and a SavedModel (TF Serving layout) answering raw sentences."""
    from keras_recnorm.export import export_saved_model

    import keras

    model.save(os.path.join(output_dir, "model.keras"))
    saved_model = os.path.join(output_dir, "saved_model")
    if keras.backend.backend() != "tensorflow":  # (--distribute jax) TensorFlow writes those
        print(f"to export for TF Serving: KERAS_BACKEND=tensorflow python export/export_model.py "
              f"{os.path.join(output_dir, 'model.keras')} {saved_model}")
        return None
    return export_saved_model(model, saved_model, overwrite=True)


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def cross_validate(args, data, cells):
    """Trains every cell on every fold; returns (metrics, history rows, curves)."""
    num_classes = len(data.class_names)
    per_cell, rows = {cell: [] for cell in cells}, []
    for k, split in enumerate(data.folds):
        vectorizer = make_vectorizer(split[0][0], args)  # adapted on this fold's training part
        for cell in cells:
            print(f"\nfold {k + 1}/{len(data.folds)}, {TITLES[cell]}")
            _, result = train_one(cell, split, vectorizer, num_classes, args, args.seed)
            per_cell[cell].append(result)
            rows.extend(history_rows(result, fold=k + 1))
    summary = {}
    for cell, results in per_cell.items():
        summary[cell] = summarize_runs(results, ("test_accuracy",))
        summary[cell]["test_accuracy_folds"] = [r["test_accuracy"] for r in results]
        summary[cell]["best_epoch_folds"] = [r["best_epoch"] for r in results]
    print_cv_table(summary, len(data.folds))
    return {"cv_folds": len(data.folds), "cells": summary}, rows, mean_curves(per_cell)


def compare(args, data, cells):
    """Trains every cell on the same data, once per seed; returns (metrics, rows, curves,
    the model with the best validation accuracy)."""
    vectorizer = make_vectorizer(data.train[0], args)
    print(f"{len(data.train[0])} training, {len(data.valid[0])} validation, "
          f"{0 if data.test is None else len(data.test[0])} test sentences; "
          f"{len(data.class_names)} classes; vocabulary {vectorizer.vocabulary_size()}")
    seeds = range(args.seed, args.seed + args.seeds)
    per_cell, rows, best = {cell: [] for cell in cells}, [], None
    for seed in seeds:
        results = []
        for cell in cells:
            print(f"\n{TITLES[cell]}" + (f", seed {seed}" if args.seeds > 1 else ""))
            model, result = train_one(cell, (data.train, data.valid, data.test), vectorizer,
                                      len(data.class_names), args, seed)
            results.append(result)
            per_cell[cell].append(result)
            rows.extend(history_rows(result))
            if best is None or result["best_val_accuracy"] > best[0]["best_val_accuracy"]:
                best = (result, model)  # chosen on validation; the other models are dropped
        # Each seed's cells are measured against the LSTM trained with the same seed.
        lstm = next((r for r in results if r["cell"] == "lstm"), None)
        if lstm is not None:
            for r in results:
                r["epochs_to_lstm_best"] = epochs_to_reach(r["history"]["val_accuracy"],
                                                           lstm["best_val_accuracy"])
    runs = {cell: [{k: v for k, v in r.items() if k != "history"} for r in results]
            for cell, results in per_cell.items()}
    if args.seeds == 1:
        print_table([results[0] for results in per_cell.values()])
        metrics = {"cells": {cell: results[0] for cell, results in runs.items()}}
    else:
        metrics = {"seeds": list(seeds),
                   "cells": {cell: summarize_seeds(results) for cell, results in runs.items()}}
        print_seeds_table(metrics["cells"])
    metrics["best_cell"], metrics["best_seed"] = best[0]["cell"], best[0]["seed"]
    return metrics, rows, mean_curves(per_cell), end_to_end(vectorizer, best[1])


def run(args):
    global setup
    started = time.perf_counter()
    check_arguments(args)
    setup = distribute.configure(args)  # before TensorFlow or JAX start
    if setup.mode != "none":
        print(f"--distribute {setup.mode}: {setup.describe()}")
    cells = list(CELLS) if args.cell == "all" else [args.cell]
    # All input is read and checked before anything is written to --output-dir.
    data = load_data(args)
    for note in data.notes:
        print(note)

    metrics = {
        "data": data.source, "class_names": data.class_names, "arguments": vars(args),
        "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M %Z"), "notes": data.notes,
        "distribute": setup.describe(),
    }
    if data.folds is not None:
        results, rows, curves = cross_validate(args, data, cells)
        best_model, suffix = None, f" (mean of {len(data.folds)} folds)"
    else:
        results, rows, curves, best_model = compare(args, data, cells)
        suffix = f" (mean of {args.seeds} seeds)" if args.seeds > 1 else ""
    metrics.update(results)

    from examples.common.plotting import plot_curves

    output_dir = setup.output_dir(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    name = data.source.split(":", 1)[1]
    name = Path(name).stem if data.source.startswith("file:") else name  # stsa.binary
    plot_curves(curves["val_accuracy"], output_dir / "validation_accuracy.png",
                title=f"{name}: validation accuracy{suffix}", ylabel="validation accuracy")
    plot_curves(curves["loss"], output_dir / "training_loss.png",
                title=f"{name}: training loss{suffix}", ylabel="training loss")
    write_history(output_dir / "history.csv", rows)
    if best_model is not None and not args.no_export:
        path = export(best_model, str(output_dir))
        metrics["model"] = str(output_dir / "model.keras")
        metrics["saved_model"] = None if path is None else str(path)
        which = TITLES[metrics["best_cell"]]
        if args.seeds > 1:
            which += f", seed {metrics['best_seed']}"
        exported = "" if path is None else f" and exported to {path}"
        print(f"\n{which} (best validation accuracy) saved to {metrics['model']}{exported}")
    metrics["wall_seconds"] = round(time.perf_counter() - started, 1)
    with open(output_dir / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"metrics, history and plots in {output_dir} ({metrics['wall_seconds']:.0f} s)")
    return metrics


@arguments.one_line_errors(tfds_data.DatasetUnavailable, tfds_data.FeatureError,
                           text_data.DataError, distribute.DistributeError)
def main(argv=None):
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
