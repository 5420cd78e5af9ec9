"""Linear probes on frozen skip-thought vectors, SentEval style, beside a bag-of-words baseline.

As in Kiros et al. (2015) and the layer-normalization paper's Table 3: encode each sentence
with a trained encoder (kept frozen), then train a logistic regression on the vectors. Tasks:

- a single `label sentence` file (MR, CR, SUBJ, MPQA style): stratified 10-fold
  cross-validation (`--task MR=../shared/data/sentences/rt-polarity.all`);
- a train and a test file: the given split (`--task SST2=train_file,test_file`);
- a TFDS text-classification dataset: its train split and its test split (or validation split
  when the test labels are hidden, as in GLUE) (`--tfds-task glue/sst2`).

Every encoder (`--encoder NAME=PATH`, an `encoder.keras` or an exported SavedModel directory
from `examples/skip_thoughts.py`) and the bag-of-words baseline are scored on the *same*
folds. The regularization C is chosen per fold on a held-out 10% of the training part, then
the probe is refit on the whole training part. Everything is seeded: the same inputs give the
same accuracies.

    python examples/skip_thoughts_eval.py \\
        --encoder layer_norm_gru=runs/skip_thoughts/layer_norm_gru/encoder.keras \\
        --encoder gru=runs/skip_thoughts/gru/encoder.keras \\
        --task MR=../shared/data/sentences/rt-polarity.all \\
        --task CR=../shared/data/sentences/custrev.all
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

if __package__ in (None, ""):  # run as a script: make `examples.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.feature_extraction.text import CountVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import log_loss  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from examples.common import arguments, text_data, tfds_data  # noqa: E402
from examples.common.arguments import UsageError  # noqa: E402

BOW = "bow"


class Task(NamedTuple):
    name: str
    texts: list[str]
    labels: np.ndarray  # class indices
    folds: list[tuple[np.ndarray, np.ndarray]]  # (train indices, test indices)
    protocol: str  # "10-fold CV", "given split", ...


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def build_parser():
    parser = arguments.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--encoder", action="append", default=[], metavar="NAME=PATH",
        help="An encoder to probe: a .keras file or a SavedModel version directory taking raw "
             "sentences. Repeat to compare encoders side by side. NAME= is optional (default: "
             "the name of the run directory).")
    parser.add_argument(
        "--task", action="append", default=[], metavar="NAME=FILE[,TEST_FILE]",
        help="A labelled sentence file ('label sentence' per line, or a TSV with sentence and "
             "label columns): one file -> k-fold cross-validation; two files -> train on the "
             "first, test on the second. Repeatable.")
    parser.add_argument("--tfds-task", action="append", default=[], metavar="DATASET",
                        help="A TFDS text-classification dataset (e.g. glue/sst2). Repeatable.")
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir for --tfds-task (default: TFDS's own).")
    parser.add_argument("--text-key", default=None, help="Text feature of --tfds-task datasets (found when there is one).")
    parser.add_argument("--label-key", default=None, help="ClassLabel feature of --tfds-task datasets (found when there is one).")
    parser.add_argument("--max-examples", type=arguments.positive_int, default=None,
                        help="Use at most this many examples per TFDS split (default: all).")
    parser.add_argument("--folds", type=int, default=10,
                        help="Cross-validation folds for single-file tasks (default: %(default)s).")
    parser.add_argument("--c-grid", default="0.01,0.1,1,10",
                        help="Comma-separated inverse L2 strengths C tried for every probe "
                             "(default: %(default)s); the probe's features are standardized.")
    parser.add_argument("--no-bow", action="store_true",
                        help="Skip the bag-of-words baseline (binary unigram counts + the same "
                             "logistic regression).")
    parser.add_argument("--batch-size", type=arguments.positive_int, default=256,
                        help="Sentences per encoder call (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=1234, help="Seed for folds and probes (default: %(default)s).")
    parser.add_argument("--output", default=None,
                        help="Write the accuracies (per task, encoder and fold) to this JSON file.")
    parser.add_argument("--plot", default=None,
                        help="Write a bar chart of the accuracies to this PNG file.")
    parser.add_argument(
        "--history", action="append", default=[], metavar="NAME=HISTORY_CSV",
        help="A training run's history.csv (from examples/skip_thoughts.py): its validation "
             "perplexity per epoch is printed beside the others. Repeatable.")
    parser.add_argument("--perplexity-plot", default=None,
                        help="With --history: plot the runs' validation perplexity per epoch "
                             "to this PNG file.")
    return parser


def parse_named(value, option):
    name, sep, rest = value.partition("=")
    if not sep:
        return None, value
    if not name or not rest:
        raise UsageError(f"{option} expects NAME=VALUE, got {value!r}.")
    return name, rest


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def read_file(path):
    """`label sentence` lines (or a sentence/label TSV), read by `examples/common/text_data`."""
    data = text_data.read_labeled_sentences(path)
    if data.skipped:  # custrev.all has four label-only lines; SentEval-style runs drop them
        print(f"{path}: skipped {data.skipped} line(s) with a label but no sentence.")
    return data


def file_task(spec, folds, seed):
    name, files = parse_named(spec, "--task")
    paths = files.split(",")
    if len(paths) > 2 or not all(paths):
        raise UsageError(f"--task expects NAME=FILE or NAME=TRAIN_FILE,TEST_FILE, got {spec!r}.")
    name = name or Path(paths[0]).stem
    if len(paths) == 1:
        data = read_file(paths[0])
        classes = text_data.class_names_from(data.labels)
        labels = text_data.encode_labels(data.labels, classes, source=paths[0])
        splits = text_data.stratified_folds(labels, folds, seed)
        return Task(name, data.texts, labels, splits, f"{folds}-fold CV")
    train, test = read_file(paths[0]), read_file(paths[1])
    classes = text_data.class_names_from(train.labels)
    labels = np.concatenate([
        text_data.encode_labels(train.labels, classes, source=paths[0]),
        text_data.encode_labels(test.labels, classes, source=paths[1]),
    ])
    n_train = len(train.texts)
    split = (np.arange(n_train), np.arange(n_train, len(labels)))
    return Task(name, train.texts + test.texts, labels, [split], "given split")


def tfds_task(name, args):
    builder = tfds_data.ensure_available(name, args.data_dir, local_option="--task")
    text_key, label_key = tfds_data.find_text_and_label(
        builder.info.features, args.text_key, args.label_key)
    if label_key is None:
        raise UsageError(f"{name} has no ClassLabel feature to probe; pass --label-key.")
    splits = tfds_data.choose_splits(builder.info)
    train_texts, train_labels = tfds_data.load_text_split(
        name, splits.train, args.data_dir, text_key, label_key, limit=args.max_examples)
    test_split = splits.test or splits.eval
    test_texts, test_labels = tfds_data.load_text_split(
        name, test_split, args.data_dir, text_key, label_key, limit=args.max_examples)
    if tfds_data.labels_are_unknown(test_labels) and splits.test is not None:
        test_split = splits.eval  # hidden test labels (GLUE): use the validation split
        test_texts, test_labels = tfds_data.load_text_split(
            name, test_split, args.data_dir, text_key, label_key, limit=args.max_examples)
    labels = np.concatenate([train_labels, test_labels])
    n_train = len(train_texts)
    split = (np.arange(n_train), np.arange(n_train, len(labels)))
    return Task(name, list(train_texts) + list(test_texts), labels, [split],
                f"{splits.train} -> {test_split}")


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def load_encoder(path):
    """A function list[str] -> (n, dim) float array, from a .keras file or a SavedModel."""
    path = Path(path)
    if path.is_dir() and (path / "saved_model.pb").exists():
        import tensorflow as tf

        serve = tf.saved_model.load(str(path)).signatures["serving_default"]

        def encode(texts):
            return serve(inputs=tf.constant(texts))["outputs"].numpy()

        return encode
    if path.suffix != ".keras" or not path.is_file():
        raise UsageError(f"--encoder: {path} is neither a .keras file nor a SavedModel directory.")
    import keras
    import tensorflow as tf

    import keras_recnorm  # noqa: F401  (registers the cells for loading)

    model = keras.saving.load_model(path)

    def encode(texts):
        return np.asarray(model(tf.constant(texts), training=False))

    return encode


def encode_all(encode, texts, batch_size):
    """Thought vectors of all texts, encoded in batches of similar length (then unsorted)."""
    order = np.argsort([len(t.split()) for t in texts], kind="stable")
    chunks = [encode([texts[i] for i in order[s:s + batch_size]])
              for s in range(0, len(texts), batch_size)]
    vectors = np.empty((len(texts), chunks[0].shape[1]), np.float32)
    vectors[order] = np.concatenate(chunks)
    return vectors


def bag_of_words(train_texts, test_texts):
    """Binary unigram counts, the vocabulary taken from the training part only."""
    vectorizer = CountVectorizer(binary=True, lowercase=True, token_pattern=r"(?u)\b\w+\b")
    return vectorizer.fit_transform(train_texts), vectorizer.transform(test_texts)


# --------------------------------------------------------------------------------------------
# Probe
# --------------------------------------------------------------------------------------------


def make_probe(c, dense, seed):
    """Logistic regression; dense vectors are standardized first (fit on training data)."""
    classifier = LogisticRegression(C=c, max_iter=1000, random_state=seed)
    return make_pipeline(StandardScaler(), classifier) if dense else classifier


def fit_probe(x_train, y_train, c_grid, dense, seed):
    """Chooses C on a held-out 10% of the training data, then refits on all of it.

    The best held-out accuracy wins; ties (frequent on small held-out sets) go to the better
    held-out log-likelihood.
    """
    fit_rows, held_rows = text_data.split_off(np.arange(len(y_train)), 0.1, seed)
    y_held = y_train[held_rows]
    best_c, best = None, None
    for c in c_grid:
        probe = make_probe(c, dense, seed).fit(x_train[fit_rows], y_train[fit_rows])
        x_held = x_train[held_rows]
        score = (probe.score(x_held, y_held),
                 -log_loss(y_held, probe.predict_proba(x_held), labels=probe.classes_))
        if best is None or score > best:
            best_c, best = c, score
    return make_probe(best_c, dense, seed).fit(x_train, y_train), best_c


def probe_accuracies(task, features, c_grid, seed):
    """Test accuracy per fold. `features` is an (n, d) array, or BOW for bag-of-words."""
    accuracies = []
    # One BLAS thread: these problems are small, and multithreaded OpenBLAS slows them down
    # by an order of magnitude as soon as the machine is busy (measured: 60x on 2 busy cores).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for train_rows, test_rows in task.folds:
            if isinstance(features, str):
                x_train, x_test = bag_of_words([task.texts[i] for i in train_rows],
                                               [task.texts[i] for i in test_rows])
            else:
                x_train, x_test = features[train_rows], features[test_rows]
            probe, _ = fit_probe(x_train, task.labels[train_rows], c_grid,
                                 dense=not isinstance(features, str), seed=seed)
            accuracies.append(float(probe.score(x_test, task.labels[test_rows])))
    return accuracies


def majority_accuracy(task):
    """Accuracy of predicting each fold's most frequent training class."""
    scores = []
    for train_rows, test_rows in task.folds:
        majority = np.bincount(task.labels[train_rows]).argmax()
        scores.append(float(np.mean(task.labels[test_rows] == majority)))
    return scores


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def plot_accuracies(results, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = list(results)
    methods = [m for m in results[tasks[0]] if m != "majority"]
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        means = [100 * np.mean(results[t][method]) for t in tasks]
        bars = axes.bar(np.arange(len(tasks)) + (j - (len(methods) - 1) / 2) * width, means,
                        width, label=method)
        axes.bar_label(bars, fmt="%.1f", fontsize=8)
    for i, task in enumerate(tasks):
        axes.hlines(100 * np.mean(results[task]["majority"]), i - 0.45, i + 0.45,
                    colors="gray", linestyles="dashed", label="majority class" if i == 0 else None)
    axes.set_xticks(np.arange(len(tasks)), tasks)
    axes.set_ylabel("test accuracy (%)")
    axes.set_ylim(40, 100)
    axes.set_title("Linear probes on frozen sentence vectors")
    axes.legend(fontsize=8, loc="upper right", ncol=2)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")


def compare_histories(specs, plot_path):
    """Prints (and plots) validation perplexity per epoch of several training runs."""
    from examples.common.plotting import plot_curves
    from examples.skip_thoughts import read_history

    curves = {}
    for spec in specs:
        name, path = parse_named(spec, "--history")
        name = name or Path(path).parent.name
        try:
            rows = read_history(path)
            curves[name] = [row["val_perplexity"] for row in rows]
        except OSError as error:
            raise UsageError(f"--history: can't read {path}: {error.strerror or error}.") from None
        except (KeyError, ValueError):
            raise UsageError(f"--history: {path} is not a history.csv with val_perplexity "
                             "(from examples/skip_thoughts.py with validation data).") from None
    print("validation perplexity by epoch")
    width = max(len(n) for n in curves) + 2
    for name, values in curves.items():
        print(name.ljust(width) + " ".join(f"{v:8.1f}" for v in values))
    if plot_path:
        plot_curves(curves, plot_path, title="Skip-thoughts: validation perplexity",
                    ylabel="perplexity (both decoders)")


def run(args):
    try:
        c_grid = [float(c) for c in args.c_grid.split(",")]
    except ValueError:
        raise UsageError(f"--c-grid expects comma-separated numbers, got {args.c_grid!r}.") from None
    if not c_grid or min(c_grid) <= 0:
        raise UsageError(f"--c-grid values must be positive, got {args.c_grid!r}.")
    if args.folds < 2:
        raise UsageError(f"--folds must be at least 2, got {args.folds}.")
    if args.perplexity_plot and not args.history:
        raise UsageError("--perplexity-plot needs at least one --history.")
    if not args.task and not args.tfds_task and not args.history:
        raise UsageError("give at least one --task, --tfds-task or --history.")
    if (args.task or args.tfds_task) and not args.encoder and args.no_bow:
        raise UsageError("nothing to probe: give an --encoder, or drop --no-bow.")
    if args.history:
        compare_histories(args.history, args.perplexity_plot)
    if not args.task and not args.tfds_task:
        return 0

    # ---- tasks and encoders (all checked before any long work) -------------------------
    tasks = [file_task(spec, args.folds, args.seed) for spec in args.task]
    tasks += [tfds_task(name, args) for name in args.tfds_task]
    encoders = {}
    for spec in args.encoder:
        name, path = parse_named(spec, "--encoder")
        if not Path(path).exists():
            raise UsageError(f"--encoder: no such file or directory: {path}")
        name = name or (Path(path).parent.name if Path(path).is_file() else Path(path).name)
        if name in encoders or name in (BOW, "majority"):
            raise UsageError(f"--encoder: the name {name!r} is used twice or reserved; "
                             "name encoders with NAME=PATH.")
        encoders[name] = load_encoder(path)

    # ---- probes ------------------------------------------------------------------------
    results = {}
    for task in tasks:
        print(f"{task.name}: {len(task.texts)} sentences, {task.protocol}", flush=True)
        results[task.name] = {"majority": majority_accuracy(task)}
        if not args.no_bow:
            results[task.name][BOW] = probe_accuracies(task, BOW, c_grid, args.seed)
        for name, encode in encoders.items():
            vectors = encode_all(encode, task.texts, args.batch_size)
            results[task.name][name] = probe_accuracies(task, vectors, c_grid, args.seed)

    # ---- report ------------------------------------------------------------------------
    methods = list(next(iter(results.values())))
    width = max(len(m) for m in methods) + 2
    print("\ntest accuracy (%), mean ± std over folds")
    print("task".ljust(10) + "".join(m.rjust(width + 6) for m in methods))
    for task_name, by_method in results.items():
        cells = []
        for method in methods:
            values = 100 * np.asarray(by_method[method])
            cells.append(f"{values.mean():.1f} ± {values.std():.1f}".rjust(width + 6))
        print(task_name.ljust(10) + "".join(cells))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=1))
    if args.plot:
        plot_accuracies(results, args.plot)
    return 0

@arguments.one_line_errors(text_data.DataError, tfds_data.DatasetUnavailable,
                           tfds_data.FeatureError)
def main(argv=None):
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
