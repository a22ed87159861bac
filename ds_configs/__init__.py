"""The DeepSpeed JSON configs shipped with jest-ds, installed as the package `jest_ds.ds_configs`.

Each holds engine settings only; `jest_ds.config.deepspeed_config` adds the batch keys, clipping,
precision and ZeRO stage from the experiment config. An experiment names one as
`train.ds_config: tiny.json` (or `ds_configs/tiny.json`).
"""
