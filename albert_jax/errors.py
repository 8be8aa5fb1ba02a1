"""The mistakes and conditions a user can fix, as exception types. A leaf: it imports nothing.

Every entry point prints an exception of these types as one `error: …` line (`cli.run_guarded`);
anything else is a bug and keeps its traceback. Each type also subclasses the built-in exception it
refines, so `except ValueError` and `except OSError` keep working for library callers.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; its message says what and how, on one line."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work (a typo'd key, a bad size, a mesh that does not fit)."""


class InputError(UserError, ValueError):
    """Input files or data that cannot be used (not a vocabulary, an empty corpus, a bad TSV)."""


class MissingError(UserError, FileNotFoundError):
    """A file, directory, checkpoint or Hub id that is not where the user said."""


class StorageError(UserError, OSError):
    """Storage that failed under the run: a full disk, no permission, an object store that keeps
    failing after retries, a checkpoint that does not save or restore."""


class TrainingError(UserError, RuntimeError):
    """A run that cannot go on (e.g. too many non-finite steps); the message says what was kept."""
