"""The project's one family of errors.

Scripts catch :class:`RagError`, print its message on one line and exit with
:attr:`RagError.exit_code`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RagError(Exception):
    """Base class of every error the pipeline raises on purpose."""

    exit_code = 1


class ConfigError(RagError):
    """The YAML config, a ``--set`` override or a stage parameter is invalid."""

    exit_code = 2


class InputError(RagError):
    """A query or command-line argument is unusable (empty query, bad flag value)."""

    exit_code = 2


class PassageTooLongError(InputError):
    """A passage is longer than the model's window and the caller asked for no truncation or windows."""


class IndexMissingError(RagError):
    """No usable index at the given path (missing, incomplete or unreadable)."""

    exit_code = 3


class IndexMismatchError(RagError):
    """The index was built with other settings than the config asks for."""

    exit_code = 2


class ModelNotFoundError(RagError):
    """A model reference cannot be resolved or loaded on this machine."""

    exit_code = 3


class CorpusError(RagError):
    """The corpus folder is missing, empty or holds no readable document."""

    exit_code = 3


class IndexLockedError(RagError):
    """Another build holds the index's lock."""

    exit_code = 1


class MissingDependencyError(RagError):
    """An optional package is needed; the message names the pip extra."""

    exit_code = 3

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the package '{package}', which is not installed; "
            f"install it with: pip install -e '.[{extra}]'"
        )


class BrokenDependencyError(RagError):
    """An optional package is installed but fails to import; the message holds the real import error."""

    exit_code = 3

    def __init__(self, package: str, extra: str, purpose: str, error: BaseException) -> None:
        cause = " ".join(str(error).split()) or type(error).__name__
        super().__init__(
            f"{purpose} needs the package '{package}', which is installed but fails to import ({cause}); "
            f"install what that names, or reinstall the extra: pip install -e '.[{extra}]'"
        )


class StageError(RagError):
    """A stage failed at run time; wraps the cause with the stage's name and type."""

    def __init__(self, kind: str, type_name: str, cause: BaseException) -> None:
        super().__init__(f"{kind} stage '{type_name}' failed: {type(cause).__name__}: {cause}")
        self.kind = kind
        self.type_name = type_name


class IndexWriteError(RagError, OSError):
    """An index folder cannot be written (read-only, disk full); the previous version stays live.

    Also an :class:`OSError`, so callers that catch the low-level error keep working.
    """

    exit_code = 1


class ServiceUnavailableError(RagError):
    """A server the pipeline needs (Milvus, a Ray cluster) cannot be reached, or a local database cannot be opened."""

    exit_code = 1


class GeneratorError(RagError):
    """The answer step failed: the LLM endpoint does not answer, rejects the key, times out or errs.

    The message is one line naming the endpoint and what to do; the retrieval results stand.
    """

    exit_code = 1
