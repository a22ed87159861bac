"""Packaging that setup.cfg cannot express: `ds_configs/` (top level of the repository) is installed
as the package `jest_ds.ds_configs`, in wheels and in editable installs alike."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["jest_ds", "jest_ds.*"]) + ["jest_ds.ds_configs"],
      package_dir={"jest_ds.ds_configs": "ds_configs"})
