"""Operations around training: hyperparameter sweeps on Optuna (``sweep``), exporting adapters (``export``), and
typed functions as commands (``arguments``)."""
