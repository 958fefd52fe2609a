"""Why the decision engine cannot route a request. These know nothing of HTTP: the API layer
maps each class onto a status code in one table (errors.py)."""
from __future__ import annotations


class RoutingError(Exception):
    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


class ModelNotFound(RoutingError):
    """``model`` (or ``router.policy``) names no policy and no target."""


class InvalidOverride(RoutingError):
    """The request's ``router`` options cannot apply to the policy or the served model."""


class CannotServe(RoutingError):
    """Constraints (privacy, context window, parameters a target lacks) rule out every target."""


class PolicyUnavailable(RoutingError):
    """The policy cannot decide now through no fault of the request (the operator's to fix)."""
