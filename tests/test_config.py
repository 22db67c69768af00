"""Flag combinations are checked before anything is written."""

import pytest

from lib.config import model_config, parse_train_args, train_parser
from lib.models import ModelConfig


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
    keys = ModelConfig.compared_fields()
    assert {"img_dim", "embed_size", "coding_type", "fusion", "text_gnn", "text_enc_type"} \
        <= set(keys)
    assert not {"learning_rate", "batch_size", "wemb_path", "bert_path", "num_epochs"} & set(keys)


def test_model_config_is_built_from_flags_and_compared_field_by_field():
    flags = set(vars(train_parser().parse_args([])))
    assert set(ModelConfig.__dataclass_fields__) <= flags  # every field is a flag
    args = parse_train_args(["--config", "asdg", "--img_dim", "12", "--aspp_rates", "2,3"])
    cfg = model_config(args)
    assert (cfg.img_dim, cfg.fusion, cfg.aspp_rates, cfg.bert_path) == \
        (12, "appm", (2, 3), "distilbert-base-uncased")
    assert model_config(args, img_dim=2048).img_dim == 2048  # the width read from the data
    saved = ModelConfig.from_dict({**cfg.to_dict(), "aspp_rates": [2, 3], "bert_path": "elsewhere",
                                   "embed_size": 512})
    assert cfg.differences(saved) == ["--embed_size 512 (now 1024)"]
