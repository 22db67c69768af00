"""Watching a run: the collapse VSE++-style training is known for at the hardest-negative switch.

After the warm-up epochs summing over all negatives, the hinge loss takes only the hardest one.
Models whose embeddings are still close together can then fall to near chance (the toy and
compositional sets show it for `vse`, and did for an earlier `asdg`): every caption's hardest
negative is almost as close as its positive, and the loss's easiest way out is to collapse the
embeddings. Detecting it costs nothing, so every run reports it in the log.
"""

from __future__ import annotations

COLLAPSE_FRACTION = 0.5  # a dev rsum below half the best before the switch counts as collapse


def collapse_after_switch(history: dict[int, float], switch_epoch: int,
                          fraction: float = COLLAPSE_FRACTION) -> str | None:
    """A warning when the dev rsum of an epoch at or after ``switch_epoch`` (the first with the
    hardest negative) fell below ``fraction`` of the best one before the switch, else None.

    ``history`` maps epoch -> dev rsum; only the latest epoch is judged, so a collapse is
    reported once, in the epoch it shows.
    """
    before = [rsum for epoch, rsum in history.items() if epoch < switch_epoch]
    latest = max(history)
    if not before or latest < switch_epoch or history[latest] >= fraction * max(before):
        return None
    return (f"dev rsum {history[latest]:.2f} at epoch {latest}, below {fraction:.0%} of the "
            f"{max(before):.2f} reached before the switch to hardest negatives at epoch "
            f"{switch_epoch}: the hardest-negative collapse of VSE++-style training. Remedies: "
            f"a longer warm-up (--vse_mean_warmup_epochs), a larger --margin (VSE∞ uses 0.2)")
