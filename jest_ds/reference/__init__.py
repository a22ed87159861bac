"""The frozen reference model: build its embedding cache (`build.py`, `jest-ds cache-ref`), read
it (`cache.py`), score a super-batch with it, from the cache or by a forward pass (`scorer.py`).

Below the training app, above models/ and data/: it never imports train/.
"""
