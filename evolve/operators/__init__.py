"""Operators: what proposes a child. The interface is in `base`; each other module registers some."""

from .base import (
    REGISTRY,
    Operator,
    OperatorError,
    OperatorSetup,
    Outcome,
    Parent,
    Proposal,
    ProposalContext,
    available,
    make_operator,
    register,
)

__all__ = [
    "REGISTRY",
    "Operator",
    "OperatorError",
    "OperatorSetup",
    "Outcome",
    "Parent",
    "Proposal",
    "ProposalContext",
    "available",
    "make_operator",
    "register",
]
