"""The demo (``make demo``): its data builder, its run (data → warm start → Step-GRPO → systems vs baselines) and
its report."""
