"""Reports computed from runs' metrics.jsonl: speedup to the IID baseline's final score."""
