"""SIGINT/SIGTERM: the first asks for a clean stop, a second Ctrl-C stops at once."""

import os
import signal

import pytest

from lib.interrupt import StopRequest


def test_first_signal_requests_a_stop_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_ctrl_c_stops_at_once():
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.exit_code == 130
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def _args(tiny_toy, run, *extra):
    return ["--data_path", str(tiny_toy / "toy"), "--text_enc_type", "bigru", "--embed_size",
            "64", "--word_dim", "32", "--batch_size", "32", "--workers", "0", "--num_epochs",
            "2", "--model_name", str(run), "--no_progress", *extra]


def test_sigint_mid_epoch_saves_a_checkpoint_that_resumes_exactly(tiny_toy, tmp_path,
                                                                 monkeypatch):
    """Ctrl-C during epoch 1: the step finishes, checkpoint.pth records epoch 1 batch 10, the
    exit code is 130, and --resume ends with the weights of an uninterrupted run."""
    import torch

    import lib.engine as engine
    import train as train_cli
    from lib.checkpoint import LATEST, load_checkpoint

    straight = tmp_path / "straight"
    train_cli.main(_args(tiny_toy, straight))
    steps_per_epoch = 1000 // 32
    calls = []

    class InterruptedStep(engine.TrainStep):
        def __call__(self, *args, **kwargs):
            loss = super().__call__(*args, **kwargs)
            calls.append(1)
            if len(calls) == steps_per_epoch + 10:
                os.kill(os.getpid(), signal.SIGINT)
            return loss

    run = tmp_path / "run"
    monkeypatch.setattr(engine, "TrainStep", InterruptedStep)
    with pytest.raises(SystemExit) as stopped:
        train_cli.main(_args(tiny_toy, run))
    assert stopped.value.code == 130
    saved = load_checkpoint(run / LATEST)
    assert (saved["epoch"], saved["step"]) == (1, 10)
    assert "continue with --resume" in (run / "train.log").read_text()
    monkeypatch.setattr(engine, "TrainStep", InterruptedStep.__mro__[1])
    train_cli.main(_args(tiny_toy, run, "--resume", str(run / LATEST)))
    a, b = load_checkpoint(straight / LATEST), load_checkpoint(run / LATEST)
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    assert a["best"] == b["best"]


def test_a_non_finite_loss_names_the_step_the_captions_and_the_checkpoint(tiny_toy, tmp_path,
                                                                         monkeypatch):
    import torch

    import lib.engine as engine
    import train as train_cli
    from lib.errors import NonFiniteLoss

    calls = []

    class NaNAtStep40(engine.TrainStep):
        def __call__(self, batch, max_violation):
            loss = super().__call__(batch, max_violation)
            calls.append(batch.cap_ids)
            return loss * float("nan") if len(calls) == 40 else loss

    monkeypatch.setattr(engine, "TrainStep", NaNAtStep40)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss) as err:
        train_cli.main(_args(tiny_toy, run, "--log_step", "5"))
    bad = calls[39].tolist()
    message = str(err.value)
    assert "training loss is nan at epoch 1, batch 8 (caption ids " in message  # 31 + 9 = 40
    assert ", ".join(map(str, bad[:12])) in message
    assert f"the last good checkpoint is {run / 'checkpoint.pth'}" in message
    assert torch.load(run / "checkpoint.pth", weights_only=True)["epoch"] == 1
