import pytest
import torch

from lib.data import DataError, Vocabulary
from lib.data.precomp import pad_sequences
from lib.data.tokenizers import WordPieceTokenizer
from lib.models import PRETRAINED_GROUP, ImageTextModel, Similarity
from lib.models.text import BertTextEncoder, GRUTextEncoder


def _check_unit_norm_and_zero_padding(emb, lengths):
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(emb[i, :n].norm(dim=-1), torch.ones(n))
        assert emb[i, n:].abs().sum() == 0


def test_bert_family_encoder_on_real_minilm(minilm_path):
    tok = WordPieceTokenizer(minilm_path)
    enc = BertTextEncoder(minilm_path, embed_size=32).eval()
    assert enc.linear.in_features == 384  # hidden width read from the model's config
    short = torch.tensor(tok.encode("a dog on the grass"))
    long = torch.tensor(tok.encode("two children are playing football in a sunny park"))
    tokens, lengths = pad_sequences([short, long], tok.pad_id)
    with torch.no_grad():
        batched = enc(tokens, lengths)
        alone = enc(short[None], lengths[:1])
    _check_unit_norm_and_zero_padding(batched, lengths)
    # the padded copy of the short caption embeds exactly like the caption on its own
    torch.testing.assert_close(batched[0, : len(short)], alone[0], atol=1e-5, rtol=0)
    # a pretrained model gives different vectors to different words
    assert (batched[0, 1] - batched[0, 2]).abs().max() > 1e-3


def test_pretrained_weights_form_their_own_learning_rate_group(minilm_path):
    enc = BertTextEncoder(minilm_path, embed_size=32)
    model = ImageTextModel(torch.nn.Linear(4, 32), enc, Similarity())
    rest, pretrained = model.param_groups(5e-4, {PRETRAINED_GROUP: 0.1}, 1e-4)
    assert {id(p) for p in pretrained["params"]} == {id(p) for p in enc.bert.parameters()}
    assert pretrained["lr"] == pytest.approx(5e-5) and pretrained["lr_factor"] == 0.1
    assert {id(p) for p in enc.linear.parameters()} <= {id(p) for p in rest["params"]}


def test_gru_encoder_ignores_padding():
    torch.manual_seed(0)
    enc = GRUTextEncoder(vocab_size=20, word_dim=8, embed_size=16).eval()
    tokens = torch.tensor([[1, 5, 6, 2, 0, 0], [1, 7, 8, 9, 10, 2]])
    lengths = torch.tensor([4, 6])
    with torch.no_grad():
        batched = enc(tokens, lengths)
        alone = enc(tokens[:1, :4], lengths[:1])
        garbage = enc(torch.tensor([[1, 5, 6, 2, 13, 14], [1, 7, 8, 9, 10, 2]]), lengths)
    _check_unit_norm_and_zero_padding(batched, lengths)
    torch.testing.assert_close(batched[0, :4], alone[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(garbage, batched, atol=1e-6, rtol=0)


def test_glove_initialisation(tmp_path):
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "dog", "cat"])
    glove = tmp_path / "glove.txt"
    glove.write_text("dog 1 2 3 4\nzebra 9 9 9 9\ncat 0.5 0 0 -1\n")
    enc = GRUTextEncoder(len(vocab), word_dim=4, embed_size=8)
    assert enc.load_word_vectors(glove, vocab.word2idx) == 2
    torch.testing.assert_close(enc.embed.weight[vocab("dog")], torch.tensor([1.0, 2, 3, 4]))
    torch.testing.assert_close(enc.embed.weight[vocab("cat")], torch.tensor([0.5, 0, 0, -1]))
    wrong_width = GRUTextEncoder(len(vocab), word_dim=300, embed_size=8)
    with pytest.raises(DataError, match=r"glove.txt:1: expected 300 values .* found 4"):
        wrong_width.load_word_vectors(glove, vocab.word2idx)
    with pytest.raises(DataError, match="needs --wemb_path"):
        enc.load_word_vectors(tmp_path / "missing.txt", vocab.word2idx)
    glove.write_text("dog 1 2 3 4\ncat 0.5 nan? 0 -1\n")
    with pytest.raises(DataError, match=r"glove.txt:2: expected numbers after the word, found "
                                        r"'nan\?'"):
        enc.load_word_vectors(glove, vocab.word2idx)
