"""Builders of datasets shipped with jest-ds (apart from the data pipeline, jest_ds/data/, which
is what a run on any shards needs). `icons/`: the embedded image–text dataset (`jest-ds data build`)."""
