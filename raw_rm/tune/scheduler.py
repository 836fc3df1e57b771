"""ASHA that never stops the baseline trial (edge: imports Ray Tune at module level).

A module of its own so that ``raw_rm.tune.driver`` imports Ray only when a search starts, while the scheduler
class still has a fixed module path: Tune pickles it by reference into the experiment state and unpickles it
on restore.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler


class BaselineKeepingASHA(AsyncHyperBandScheduler):
    """ASHA that records the baseline trial at every rung but never stops it, so the search's gain over the
    untuned config is measured on a fully trained baseline (it would otherwise be cut whenever a better trial
    reaches a rung first).

    Args:
        baseline: the baseline trial's sampled values (None values left out); None = no baseline.
        kwargs: ``AsyncHyperBandScheduler``'s.
    """

    def __init__(self, *, baseline: dict[str, Any] | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.baseline = baseline

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        config = {k: v for k, v in (trial.config or {}).items() if v is not None}
        return TrialScheduler.CONTINUE if self.baseline is not None and config == self.baseline else action
