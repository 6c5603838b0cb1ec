"""Exception classes of evonas: every expected failure is one of these, with a one-line message.

The CLI turns any `EvonasError` into `error: <message>` and exit code 2; anything else is a bug.
"""

from __future__ import annotations


class EvonasError(Exception):
    """Base class of every error evonas raises on purpose (bad input, bad file, bad config)."""


class CellSyntaxError(EvonasError, ValueError):
    """A cell text that does not parse. Carries the 1-based column and a caret line."""

    def __init__(self, message: str, text: str = "", column: int = 1):
        self.text = text
        self.column = column
        self.reason = message
        super().__init__(f"{message} at column {column}")

    def caret(self) -> str:
        """Two lines: the text (the line holding the column, if it has several) and a caret under the column."""
        start = self.text.rfind("\n", 0, self.column - 1) + 1
        end = self.text.find("\n", start)
        line = self.text[start:] if end == -1 else self.text[start:end]
        line = "".join(" " if ch.isspace() and ch != "\t" else ch for ch in line)  # no \r etc. on a terminal
        pad = "".join("\t" if ch == "\t" else " " for ch in line[: self.column - 1 - start])
        return f"{line}\n{pad}^"


class CellError(EvonasError, ValueError):
    """A cell that parses but breaks a well-formedness rule; names the node and the rule."""

    def __init__(self, message: str, node: str = "", rule: str = ""):
        self.node = node
        self.rule = rule
        super().__init__(message)


class ConfigError(EvonasError, ValueError):
    """A run config (YAML or keyword) with an unknown key or a bad value."""


class DataError(EvonasError):
    """A data path that is missing, empty, or in the wrong format."""


class CheckpointError(EvonasError):
    """A checkpoint or archive file that cannot be read (truncated, garbled, wrong version)."""


class SurrogateFormatError(EvonasError):
    """A surrogate file of another format version, corrupt, or not a plain state dict."""


class RunInUseError(EvonasError):
    """A run folder whose lock is held by another live evonas process (one writer per run)."""
