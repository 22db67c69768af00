"""Training schedule: learning-rate step, BERT factor, warm-up -> hardest-negative switch."""

from argparse import Namespace

import torch

from lib.data.batch import Batch
from lib.engine import set_learning_rate, train_one_epoch
from lib.losses import ContrastiveLoss
from lib.models import Embeddings
from lib.similarity import Similarity


class _Loader(list):
    """A one-batch loader exposing ``dataset.set_epoch`` like the real one."""

    class _Dataset:
        def set_epoch(self, epoch):
            self.epoch = epoch

    def __init__(self, batch):
        super().__init__([batch])
        self.dataset = self._Dataset()


class _Model(torch.nn.Module):
    """One region and one token per item, so VHA + Mean scores are plain dot products."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.eye(3))
        self.sim = Similarity("VHACoding", "MeanPooling")

    def forward(self, images, img_lens, captions, cap_lens):
        return Embeddings((images @ self.w)[:, None], img_lens, captions[:, None], cap_lens)

    def score(self, emb):
        return self.sim(emb.images, emb.img_lens, emb.captions, emb.cap_lens)


def test_step_decay_and_bert_factor():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_factor": 1.0},
              {"params": [torch.nn.Parameter(torch.zeros(1))], "lr_factor": 0.1}]
    optimizer = torch.optim.AdamW(groups, lr=5e-4)
    expected = {0: (5e-4, 5e-5), 14: (5e-4, 5e-5), 15: (5e-5, 5e-6), 24: (5e-5, 5e-6)}
    for epoch, (lr, bert_lr) in expected.items():
        set_learning_rate(optimizer, 5e-4, epoch, lr_update=15)
        assert [g["lr"] for g in optimizer.param_groups] == [lr, bert_lr]


def test_warmup_sums_negatives_then_takes_the_hardest():
    batch = Batch(images=torch.eye(3), img_lens=torch.ones(3, dtype=torch.long),
                  captions=torch.eye(3).flip(0), cap_lens=torch.ones(3, dtype=torch.long),
                  cap_ids=torch.arange(3), img_ids=torch.arange(3))
    loader = _Loader(batch)
    args = Namespace(max_violation=False, vse_mean_warmup_epochs=1, grad_clip=2.0, log_step=10,
                     no_progress=True, batch_size=3, compile=False)
    model, criterion = _Model(), ContrastiveLoss(margin=0.2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the loss is reproducible
    scores = batch.images @ batch.captions.t()
    warm = train_one_epoch(model, criterion, loader, optimizer, torch.device("cpu"), 0, args)
    assert loader.dataset.epoch == 0
    assert warm["loss"] == criterion(scores, batch.img_ids, max_violation=False).item()
    hard = train_one_epoch(model, criterion, loader, optimizer, torch.device("cpu"), 1, args)
    assert loader.dataset.epoch == 1
    assert hard["loss"] == criterion(scores, batch.img_ids, max_violation=True).item()
    assert hard["loss"] != warm["loss"]
    assert "max_violation" not in vars(criterion)  # the switch is an argument, not loss state
