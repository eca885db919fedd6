"""The tamper-evident audit log: hash-chained JSON lines, written before an action is
acknowledged, and the check of a chain (``fetchml audit verify``)."""

from ._log import GENESIS, AuditLog, VerifyResult, verify_chain

__all__ = ["GENESIS", "AuditLog", "VerifyResult", "verify_chain"]
