"""The named configurations are the published (chan, chan_gru, vse) and seed (asdg) recipes."""

import argparse

import numpy as np
import pytest
import torch

import train as train_cli
from lib.checkpoint import VERSION
from lib.config import model_config, parse_train_args, saved_model_config
from lib.data import Batch
from lib.engine import batch_loss
from lib.losses import build_criterion
from lib.models import build_model
from lib.models.context import SelfAttentionBlock
from lib.models.fusion import SeedAPPM
from lib.similarity import pairwise_sims


def _config(name, *extra):
    return parse_train_args(["--config", name, "--data_path", "data/f30k", *extra])


def _model(args, vocab_size=50):
    return build_model(model_config(args, img_dim=12), vocab_size, pretrained=False)


def test_chan_image_encoder_is_one_fc_layer():
    args = _config("chan", "--text_enc_type", "bigru", "--embed_size", "16")
    names = {name for name, _ in _model(args).img_enc.named_parameters()}
    assert names == {"fc.weight", "fc.bias"}
    vse = _model(_config("vse", "--text_enc_type", "bigru", "--embed_size", "16"))
    assert {n.split(".")[0] for n, _ in vse.img_enc.named_parameters()} == {"fc", "mlp"}


def test_chan_gru_recipe(tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text("dog " + " ".join(["0.5"] * 300) + "\n")
    args = _config("chan_gru", "--wemb_path", str(glove), "--embed_size", "64")
    assert (args.precomp_enc_type, args.text_enc_type, args.wemb_type) == \
        ("selfattention", "bigru", "glove")
    assert (args.coding_type, args.pooling_type, args.belta) == ("VHACoding", "LSEPooling", 0.1)
    assert (args.batch_size, args.weight_decay, args.word_dim, args.margin) == (384, 0.01, 300,
                                                                                 0.05)
    model = build_model(model_config(args, img_dim=12), 10, word_index={"dog": 4})
    block = model.img_enc.context
    assert isinstance(block, SelfAttentionBlock) and block.scale is None
    assert block.attn.dropout == 0.0
    assert torch.equal(model.txt_enc.embed.weight[4], torch.full((300,), 0.5))
    optimizer = train_cli.build_optimizer(model, args)
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.01}


def test_chan_gru_needs_glove_or_says_so(capsys):
    with pytest.raises(SystemExit):
        _config("chan_gru")
    assert "--wemb_type glove (set by --config chan_gru) needs --wemb_path" in \
        capsys.readouterr().err
    assert _config("chan_gru", "--wemb_type", "none").wemb_type == "none"


def test_asdg_uses_the_seed_forms():
    args = _config("asdg", "--text_enc_type", "bigru", "--embed_size", "32", "--fusion_dim", "8",
                   "--gnn_hidden", "8")
    model = _model(args)
    assert isinstance(model.img_enc.fusion, SeedAPPM)
    assert type(model.img_enc.context).__name__ == "SeedSASE"
    # the one change of ours (docs/ABLATION.md): LayerScale on the residual branches
    assert model.img_enc.context.attention.attn.dropout == 0.0
    torch.testing.assert_close(model.txt_enc.graph.scale.data, torch.full((32,), 0.1))
    plain = _model(_config("asdg", "--text_enc_type", "bigru", "--embed_size", "32",
                           "--fusion_dim", "8", "--gnn_hidden", "8", "--layer_scale", "none"))
    assert plain.txt_enc.graph.scale is None and plain.img_enc.context.attention.scale is None


def test_vse_keeps_its_margin():
    assert _config("vse").margin == 0.2 and _config("chan").margin == 0.05
    assert _config("vse").positives == _config("chan").positives == "diagonal"


def test_vse_and_chan_flags_that_are_replaced_say_so(capsys):
    with pytest.raises(SystemExit):
        parse_train_args(["--val_step", "500"])
    assert "--val_step (a VSE∞/CHAN flag) is not taken here: validation runs once per epoch" in \
        capsys.readouterr().err


def test_scores_under_bf16_autocast_are_float32():
    """The loss sees float32 scores of the bf16 encoder outputs, not bf16 products."""
    torch.manual_seed(0)
    args = _config("chan", "--text_enc_type", "bigru", "--embed_size", "64")
    model = _model(args).eval()
    batch = Batch(images=torch.randn(6, 5, 12), img_lens=torch.tensor([5, 3, 5, 4, 2, 5]),
                  captions=torch.randint(4, 50, (6, 7)), cap_lens=torch.tensor([7, 5, 6, 3, 7, 4]),
                  cap_ids=torch.arange(6), img_ids=torch.arange(6))
    seen = {}

    def spy(scores, img_ids, max_violation=False):
        seen["scores"] = scores
        return scores.sum()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        batch_loss(model, spy, batch, max_violation=False)
        emb = model(batch.images, batch.img_lens, batch.captions, batch.cap_lens)
    assert emb.images.dtype == torch.bfloat16  # the encoders ran in bf16
    exact = pairwise_sims(emb.images.float(), emb.img_lens, emb.captions.float(), emb.cap_lens)
    assert seen["scores"].dtype == torch.float32
    torch.testing.assert_close(seen["scores"], exact, rtol=0, atol=1e-5)


def test_drop_switches_caption_augmentation_too(tiny_toy):
    from lib.data import build_tokenizer, load_vocab, open_split, train_loader

    def first_tokens(*flags):
        args = parse_train_args(["--data_path", str(tiny_toy / "toy"), "--text_enc_type",
                                 "bigru", "--workers", "0", *flags])
        split = open_split(args.data_path, "train")
        tokenizer = build_tokenizer(args, load_vocab(args.vocab_path, args.data_name))
        batch = train_loader(args, tokenizer, split).dataset[(0, np.arange(200))]
        return [row[:n] for row, n in zip(batch.captions.tolist(), batch.cap_lens.tolist(),
                                          strict=True)]

    augmented, not_augmented = first_tokens("--drop"), first_tokens("--no-drop")
    assert augmented != not_augmented
    args = parse_train_args(["--data_path", str(tiny_toy / "toy"), "--text_enc_type", "bigru"])
    tokenizer = build_tokenizer(args, load_vocab(args.vocab_path, args.data_name))
    captions = open_split(args.data_path, "train").captions[:200]
    assert not_augmented == [tokenizer.encode(c) for c in captions]


def test_old_basic_checkpoints_keep_their_mlp():
    flags = vars(argparse.Namespace(**vars(_config("vse", "--text_enc_type", "bigru"))))
    old = {"config": {**flags, "precomp_enc_type": "basic", "img_dim": 12}, "version": 2}
    assert saved_model_config(old, "old.pth").precomp_enc_type == "basic_mlp"
    new = {**old, "version": VERSION}
    assert saved_model_config(new, "new.pth").precomp_enc_type == "basic"


def test_criterion_follows_the_positives_flag():
    args = _config("chan", "--positives", "same_image")
    assert build_criterion(args).positives == "same_image"
