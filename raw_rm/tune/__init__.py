"""Ray Tune search over losses, temperatures and training settings, in three modules:

- ``space.py`` (core, no Ray): parse and validate ``tune.space`` (``parse_space``, also run by ``load_config``),
  the baseline point, a trial's config (``trial_config``), Optuna's define-by-run space.
- ``driver.py`` (edge: Ray Tune, imported lazily): trials running THE recipe, the ``Tuner``, searchers, ASHA
  (``scheduler.py``), restore; ``run_tune(cfg) -> TuneOutcome``.
- ``results.py`` (core): the experiment folder read back without Ray: ``collect_results``, ``top_k_configs``,
  ``results.csv``, plots, ``format_summary``.

MLflow logging of an experiment and registration of its best model are ``raw_rm.tracking.tune``'s.

    from raw_rm.tune.driver import run_tune
    from raw_rm.tune.results import format_summary

    outcome = run_tune(load_config("raw_rm/configs/tune_default.yaml"))
    print(format_summary(outcome))
"""
