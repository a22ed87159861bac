"""jest-ds: SigLIP pretraining on DeepSpeed with JEST online data selection."""
