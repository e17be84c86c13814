"""The F1-Recall metric, the Step-GRPO step rewards, the scorer that applies them, and on-policy episode rewards."""
