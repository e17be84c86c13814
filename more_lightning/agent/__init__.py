"""The agent: the episode runner that training, ``evaluate``, ``ask`` and ``synthesize`` share, its traces, and the
evaluation reports and figures made from them."""
