"""The F1-Recall metric and the Step-GRPO step rewards."""
