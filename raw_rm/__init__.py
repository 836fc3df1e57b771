"""raw_rm: reward models from human preference data, trained on Ray, versioned in MLflow, served on Ray Serve."""

__version__ = "0.1.0"
