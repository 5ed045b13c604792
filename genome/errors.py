"""The errors genome raises: each says in one line what went wrong and what to do."""

from __future__ import annotations


class GenomeError(Exception):
    """A user-facing problem with the workspace repository, a genome or an export (one line)."""


class EditError(GenomeError):
    """An LLM's edit could not be parsed or applied. The message is written to be sent back to the
    LLM as is: it says which block failed and quotes the closest lines of the file, numbered."""
