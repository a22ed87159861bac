"""jest-ds: SigLIP pretraining on DeepSpeed with JEST online data selection.

Inference on an exported model (see `jest_ds.inference`)::

    model, preprocess, tokenizer = jest_ds.create_model_and_transforms("runs/my_run/export")
"""

__all__ = ["create_model_and_transforms", "get_preprocess", "get_tokenizer"]


def __getattr__(name: str):
    # Imported on first use, so that `import jest_ds` (every CLI command) does not load torch and the towers.
    if name in __all__:
        from jest_ds import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'jest_ds' has no attribute {name!r}")
