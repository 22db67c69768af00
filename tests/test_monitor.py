"""The hardest-negative collapse is noticed and reported once."""

from lib.monitor import collapse_after_switch


def test_a_fall_after_the_switch_is_reported():
    history = {0: 81.9}
    assert collapse_after_switch(history, switch_epoch=1) is None  # still in the warm-up
    history[1] = 9.2  # vse on the compositional set, as issue 11 measured it
    warning = collapse_after_switch(history, switch_epoch=1)
    assert warning.startswith("dev rsum 9.20 at epoch 1, below 50% of the 81.90 reached before "
                              "the switch to hardest negatives at epoch 1")
    assert "--vse_mean_warmup_epochs" in warning and "--margin" in warning


def test_steady_or_rising_runs_are_not_reported():
    assert collapse_after_switch({0: 45.8, 1: 114.4, 2: 237.1}, switch_epoch=1) is None
    assert collapse_after_switch({0: 100.0, 1: 60.0}, switch_epoch=1) is None  # a dip, not half
    assert collapse_after_switch({3: 5.0}, switch_epoch=1) is None  # resumed: nothing to compare
