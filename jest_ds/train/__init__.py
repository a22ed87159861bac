"""The training app: engine setup, the JEST step, checkpoints, metrics."""
