"""The embedded icon dataset (`jest-ds data build`): settings (`settings.IconsBuild`, one
dataclass for the options and the manifest), the sources' readers (`sources.py`), rendering
(`render.py`), the build (`build.py`) and LICENCES.md (`licences.py`). docs/data.md describes it."""

# The per-sample json flags of the embedded dataset that training reports shares of (chosen vs all):
# metric name -> json field (jest_ds/train/selection_metrics.py). `caption_noisy`: planted noise
# (every part); `on_target`: a pool sample from the target sets.
SAMPLE_FLAGS = {"noisy": "caption_noisy", "target": "on_target"}
