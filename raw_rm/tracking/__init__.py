"""Every MLflow call of raw_rm (edge): runs, the model registry, Tune logging, ensemble registration.

- ``runs.py``: stores, one MLflow run per training (``tracking(cfg)``), config params, lineage tags
  (``source_fingerprint``, ``git_commit``), the rank-0 ``MlflowCallback``, report and model artifacts.
- ``registry.py``: versions (``register_version``), aliases, the promotion gate, promote/rollback, ``models:/`` and
  ``runs:/`` URI resolution (``uri_resolver``), and ``tracked_training`` (train, evaluate for the gate, register).
- ``tune.py``: a Tune experiment as a parent run with a run per trial; the best trial's model evaluated for the
  gate and registered (``log_tune_experiment``).
- ``ensemble.py``: an ensemble as one run with a child run per member, registered as ONE version
  (``register_ensemble``).

Core modules never import this package; the evaluation it logs is ``raw_rm.eval.gate``'s.
"""
