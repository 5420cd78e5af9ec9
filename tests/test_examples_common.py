"""examples/common: the cell table, the argument checks and the text decoder every script uses."""

import argparse
import importlib

import keras
import pytest

import keras_recnorm
from examples.common import arguments, cells, text_data
from tests.conftest import kinds

# Keras's layers, and every kind of keras_recnorm.kinds.KINDS with a layer, under its name.
EXPECTED_CLASSES = {
    "lstm": keras.layers.LSTM,
    "gru": keras.layers.GRU,
    **{kind.name: kind.layer for kind in kinds(layer=True)},
}


# --------------------------------------------------------------------------------- cells


@pytest.mark.parametrize("name", list(EXPECTED_CLASSES))
def test_every_name_builds_its_layer_with_the_arguments_given(name):
    layer = cells.recurrent_layer(name, 3, max_timesteps=7, gamma=0.25, return_sequences=True,
                                  name="rnn")
    assert type(layer) is EXPECTED_CLASSES[name]
    assert (layer.name, layer.return_sequences) == ("rnn", True)
    assert layer.cell.units == 3
    outputs = layer(keras.ops.ones((2, 4, 5)))
    assert tuple(outputs.shape) == (2, 4, 3)
    if name.startswith("batch_norm"):
        assert layer.cell.max_timesteps == 7
        gammas = [w for w in layer.weights if "gamma" in w.path]
        assert gammas and all(float(keras.ops.max(abs(w.value - 0.25))) == 0 for w in gammas)


def test_aliases_are_the_lstm_names():
    assert cells.canonical("layer_norm") == "layer_norm_lstm"
    assert cells.canonical("batch_norm") == "batch_norm_lstm"
    assert cells.canonical("gru") == "gru"
    assert type(cells.recurrent_layer("layer_norm", 2)) is keras_recnorm.LayerNormLSTM
    layer = cells.recurrent_layer("batch_norm", 2, max_timesteps=3)
    assert type(layer) is keras_recnorm.BatchNormLSTM
    assert cells.TITLES[cells.canonical("batch_norm")] == "BN-LSTM"


def test_unknown_name_and_missing_max_timesteps_are_one_line_errors():
    with pytest.raises(ValueError) as error:
        cells.recurrent_layer("layernorm", 4)
    message = str(error.value)
    assert "\n" not in message and "'layernorm'" in message and "layer_norm_lstm" in message
    with pytest.raises(ValueError, match="batch_norm_gru needs max_timesteps"):
        cells.recurrent_layer("batch_norm_gru", 4)


def test_cell_option_accepts_aliases_lists_them_and_rejects_the_rest():
    parser = arguments.ArgumentParser()
    parser.add_argument("--cell", **cells.cell_option(
        ("lstm", "batch_norm_lstm"), default="lstm", help="the cell", all_cells=True))
    assert parser.parse_args(["--cell", "batch_norm"]).cell == "batch_norm_lstm"
    assert parser.parse_args(["--cell", "all"]).cell == "all"
    assert parser.parse_args([]).cell == "lstm"
    assert "older names: batch_norm = batch_norm_lstm" in parser.format_help()
    assert "layer_norm =" not in parser.format_help()  # not offered, not listed
    with pytest.raises(arguments.UsageError, match="invalid choice: 'layer_norm_lstm'"):
        parser.parse_args(["--cell", "layer_norm"])


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("check, good, bad", [
    (arguments.positive_int, {"3": 3}, ["0", "-2", "2.5", "x"]),
    (arguments.positive_float, {"1e-3": 1e-3}, ["0", "-1", "nan", "x"]),
    (arguments.non_negative_float, {"0": 0.0, "2": 2.0}, ["-0.1", "x"]),
    (arguments.fraction, {"0": 0.0, "0.5": 0.5}, ["1", "-0.1", "x"]),
    (arguments.proper_fraction, {"0.1": 0.1}, ["0", "1", "1.5"]),
])
def test_number_checks(check, good, bad):
    for text, value in good.items():
        assert check(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match="^expected .*, got "):
            check(text)


def test_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    parser = arguments.ArgumentParser()
    parser.add_argument("--units", type=arguments.positive_int, default=1, help="units")
    parser.add_argument("--file", type=arguments.existing_file, default=None, help="a file")

    @arguments.one_line_errors(KeyError)
    def main(argv):
        args = parser.parse_args(argv)
        if args.units == 2:
            raise KeyError("two")
        return 0

    (tmp_path / "here.txt").write_text("x")
    assert main(["--file", str(tmp_path / "here.txt")]) == 0
    for argv, expected in [
            (["--units", "0"], "argument --units: expected a positive integer, got 0"),
            (["--file", str(tmp_path / "gone.txt")], f"no such file: {tmp_path / 'gone.txt'}"),
            (["--nope"], "unrecognized arguments: --nope"),
            (["--units", "2"], "'two'")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("test_examples_common.py: error: ")
        assert expected in err


# ------------------------------------------------------------------------------- decoding


def test_decode_reads_utf8_else_latin1(tmp_path):
    assert text_data.decode("caf\xe9 \u2019".encode("utf-8")) == "caf\xe9 \u2019"
    assert text_data.decode("caf\xe9".encode("latin-1")) == "caf\xe9"
    (tmp_path / "mixed.txt").write_bytes("na\xefve".encode("latin-1") + b"\n")
    assert text_data.read_text(tmp_path / "mixed.txt") == "na\xefve\n"


# ------------------------------------------------------------------------------- scripts


@pytest.mark.parametrize("script", ["sentence_classification", "sequential_mnist",
                                    "skip_thoughts", "skip_thoughts_eval", "demo"])
def test_every_script_explains_every_option_and_reports_errors_in_one_line(script):
    parser = importlib.import_module(f"examples.{script}").build_parser()
    assert isinstance(parser, arguments.ArgumentParser)
    undocumented = [action.option_strings or action.dest for action in parser._actions
                    if not (action.help and action.help.strip())]
    assert undocumented == []
    text = parser.format_help()
    for action in parser._actions:
        assert all(option in text for option in action.option_strings)
    cell = next((a for a in parser._actions if "--cell" in a.option_strings), None)
    if cell is not None:  # the shared names, and the older ones listed
        assert set(cell.choices) - {"all"} <= set(cells.CELLS)
        assert "older names: layer_norm = layer_norm_lstm" in " ".join(text.split())


@pytest.mark.parametrize("script", ["sentence_classification", "skip_thoughts"])
def test_scripts_for_any_recurrent_layer_offer_every_cell(script):
    """A kind added to keras_recnorm.kinds.KINDS is offered without an edit of the script."""
    parser = importlib.import_module(f"examples.{script}").build_parser()
    (cell,) = [a for a in parser._actions if "--cell" in a.option_strings]
    assert set(cells.CELLS) <= set(cell.choices)
