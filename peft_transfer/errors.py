"""The mistakes a user can fix, as one family of exceptions.

A `UserError` carries one message that names the problem and the fix. The `peft-transfer` command (and
`recipes/transfer.py`) prints that message alone and exits with status 2; a traceback is shown only with `--debug`
or `PEFT_TRANSFER_DEBUG=1`. Each subclass is also a `ValueError`, so code that caught the plain errors still works.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem in the settings, the files or the run directory that the user can fix."""


class ConfigError(UserError):
    """A `TransferConfig` with impossible or missing settings."""


class SettingsChangedError(UserError):
    """A run directory holds finished stages made with other settings than the ones given now."""


class PreflightError(UserError):
    """A check made before the first stage failed (a file, an adapter, a tokenizer, the output directory)."""
