"""Flag combinations are checked before anything is written."""

import pytest

from lib.config import model_keys, parse_train_args


def _parse_error(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        parse_train_args(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_flag_combinations_are_refused(capsys):
    assert "--text_enc_type bert needs a model" in _parse_error(capsys)
    assert "must be a multiple of 8, got 100" in _parse_error(
        capsys, "--text_enc_type", "bigru", "--precomp_enc_type", "sase", "--embed_size", "100")
    assert "--reset_start_epoch needs --resume" in _parse_error(
        capsys, "--config", "chan", "--reset_start_epoch")
    assert "--obj_drop_rate must be in [0, 1)" in _parse_error(
        capsys, "--config", "chan", "--obj_drop_rate", "1")
    assert "--log_step must be at least 1" in _parse_error(capsys, "--config", "chan",
                                                           "--log_step", "0")


def test_vocabulary_defaults_to_the_scan_layout():
    args = parse_train_args(["--text_enc_type", "bigru", "--data_path", "/data/f30k"])
    assert args.vocab_path == "/data/vocab"
    args = parse_train_args(["--config", "asdg", "--vocab_path", "v.json"])
    assert args.vocab_path == "v.json" and args.bert_path == "distilbert-base-uncased"


def test_model_keys_are_the_architecture_flags():
    keys = model_keys()
    assert {"img_dim", "embed_size", "coding_type", "fusion", "text_gnn", "text_enc_type"} \
        <= set(keys)
    assert not {"learning_rate", "batch_size", "wemb_path", "bert_path", "num_epochs"} & set(keys)
