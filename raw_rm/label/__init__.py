"""Labelling: people judge pairs (or k-wise groups) in a small web app; agreement, export to training data.

Core (no web framework): ``pool`` (items from a pool file), ``assignment`` (who sees what next), ``judgement``
(one answer and its validation), ``store`` (SQLite), ``agreement`` (statistics), ``export`` (training rows),
``report`` (summary and plots). Edge: ``app`` (the FastAPI app) and ``raw_rm/cli/label.py``.
"""
