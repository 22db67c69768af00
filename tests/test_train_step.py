"""The fast training step against the eager reference: bucketed shapes and compilation change
neither the loss nor the gradients beyond float rounding."""

import copy
import shutil

import numpy as np
import pytest
import torch
from conftest import write_precomp

import train as train_cli
from lib.config import model_config, parse_train_args
from lib.data import build_tokenizer, open_split
from lib.data.batch import Batch
from lib.data.pairs import CaptionFormat, PairBatches
from lib.data.precomp import pad_sequences
from lib.data.tokens import tokenize_captions
from lib.engine import TrainStep, batch_loss
from lib.losses import build_criterion
from lib.models import build_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
WORDS = ["a", "dog", "cat", "snowboarding", "skateboarders", "near", "red", "tree", "runs"]


@pytest.fixture(scope="module")
def setting(tmp_path_factory, minilm_path):
    """A tiny BERT (random weights, no dropout) with the MiniLM tokenizer, and a SCAN split."""
    from pathlib import Path

    from transformers import BertConfig

    root = tmp_path_factory.mktemp("step")
    text = root / "text"
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0).save_pretrained(text)
    for name in TOKENIZER_FILES:
        shutil.copy(Path(minilm_path) / name, text / name)
    rng = np.random.default_rng(0)
    captions = [" ".join(rng.choice(WORDS, rng.integers(3, 11))) for _ in range(60)]
    write_precomp(root / "data", "train", rng.standard_normal((12, 9, 16)).astype(np.float32),
                  captions)
    return root, text


def _build(setting, config):
    root, text = setting
    args = parse_train_args(["--config", config, "--data_path", str(root / "data"),
                             "--data_name", "tiny", "--bert_path", str(text), "--embed_size",
                             "32", "--gnn_hidden", "16", "--fusion_dim", "8", "--aspp_rates",
                             "2", "--ppm_bins", "1,2", "--batch_size", "12"])
    split = open_split(root / "data", "train", 16)
    tokenizer = build_tokenizer(args)
    torch.manual_seed(0)
    model = build_model(model_config(args, 16), pretrained=False)
    for module in model.modules():  # deterministic training mode: BatchNorm on, dropout off
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = 0.0
    pairs = PairBatches(split, tokenize_captions(split.captions, tokenizer),
                        CaptionFormat.of(tokenizer), region_drop=0.5, seed=1)
    batch = pairs[(2, np.sort(np.random.default_rng(1).choice(60, 12, replace=False)))]
    return args, model.train(), build_criterion(args), batch, tokenizer.pad_id


def _per_item(batch: Batch, pad_id: int) -> Batch:
    """The same pairs collated the per-item way: each side padded to its longest item only."""
    regions = [batch.images[b, :n] for b, n in enumerate(batch.img_lens.tolist())]
    tokens = [batch.captions[b, :n] for b, n in enumerate(batch.cap_lens.tolist())]
    images, img_lens = pad_sequences(regions)
    captions, cap_lens = pad_sequences(tokens, pad_id)
    return Batch(images, img_lens, captions, cap_lens, batch.cap_ids, batch.img_ids)


def _loss_and_grads(model, criterion, batch, max_violation=True):
    model.zero_grad(set_to_none=True)
    loss = batch_loss(model, criterion, batch, max_violation)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                           if p.grad is not None}


@pytest.mark.parametrize("config", ["chan", "asdg"])
def test_bucketed_batch_gives_the_per_item_loss_and_gradients(setting, config):
    _, model, criterion, batch, pad_id = _build(setting, config)
    reference = _per_item(batch, pad_id)
    assert batch.captions.shape[1] % 8 == 0 and batch.images.shape[1] == 9
    assert reference.captions.shape[1] < batch.captions.shape[1]  # the bucket adds padding
    assert reference.images.shape[1] < batch.images.shape[1]  # and so does R
    loss, grads = _loss_and_grads(copy.deepcopy(model), criterion, batch)
    ref_loss, ref_grads = _loss_and_grads(copy.deepcopy(model), criterion, reference)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_compiled_step_matches_the_eager_step(setting):
    """Loss, gradients and updated weights over two steps (both loss regimes).

    Weights whose gradient is rounding noise (a bias before BatchNorm has gradient 0 in exact
    arithmetic) are left out of the weight comparison: AdamW scales any gradient to a step of
    about the learning rate, so two correct implementations move them differently.
    """
    args, model, criterion, batch, _ = _build(setting, "chan")
    steps = {}
    for compile_mode in (None, "default"):
        args.compile = compile_mode is not None
        copy_ = copy.deepcopy(model)
        optimizer = train_cli.build_optimizer(copy_, args)
        step = TrainStep(copy_, criterion, optimizer, args.grad_clip, "fp32",
                         torch.device("cpu"), compile_mode)
        losses = [step(batch, False), step(batch, True)]
        steps[compile_mode] = losses, copy_
    (eager_losses, eager), (compiled_losses, compiled) = steps[None], steps["default"]
    torch.testing.assert_close(compiled_losses, eager_losses, atol=1e-5, rtol=1e-5)
    compared = total = 0
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        if p.grad is None:  # unused (BERT's pooler): never updated
            assert q.grad is None and torch.equal(q, p), name
            continue
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
        signal = p.grad.abs() > 1e-6
        torch.testing.assert_close(q[signal], p[signal], atol=1e-5, rtol=1e-5, msg=name)
        compared, total = compared + int(signal.sum()), total + int((p.grad != 0).sum())
    assert compared > 0.9 * total  # nearly every weight that has a gradient
