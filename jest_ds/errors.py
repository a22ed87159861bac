"""The project's user-facing errors: what the `jest-ds` CLI turns into one line and exit code 2.

`ConfigError`: a bad setting (a config field or a command-line option); `DataError`: a file whose
contents are not what they must be (a shard, tokenizer, evaluation set, export, reference cache,
checkpoint record). A missing file is Python's FileNotFoundError. Both classes are ValueErrors
too, so code that catches ValueError keeps working. Anything else raised inside jest-ds is a bug
and keeps its traceback (jest_ds/cli.py).
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user, stated in one line that says what to change."""


class ConfigError(UserError, ValueError):
    """A bad configuration value (YAML field, --set override or command-line option)."""


class UnknownMetricError(ConfigError, KeyError):
    """A config names a metric that the run does not produce (a KeyError too)."""


class DataError(UserError, ValueError):
    """A file of the user's whose contents are wrong: shards, tokenizer, evaluation set, export, cache."""


USER_ERRORS = (UserError, FileNotFoundError)
