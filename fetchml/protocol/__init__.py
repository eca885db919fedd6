"""The wire protocol, one definition shared by the server, the client and the actors."""

from ._errors import ErrorBody

__all__ = ["ErrorBody"]
