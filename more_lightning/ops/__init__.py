"""The commands' plumbing: the LightningCLI behind ``fit`` (``lightning_cli``), typed functions as commands and their
config check (``arguments``, ``config_check``), hyperparameter sweeps on Optuna (``sweep``), exporting adapters
(``export``)."""
