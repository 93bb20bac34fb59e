"""Named exception types. Every one of them ends in a deny when raised on the check path."""

from __future__ import annotations


class LlmAuthzError(Exception):
    """Base class of every error the service raises on purpose."""


class ConfigError(LlmAuthzError):
    """The service configuration is unusable."""


class TenantFileError(LlmAuthzError):
    """A tenant file is invalid; carries the file, the field and the line for the operator."""

    def __init__(self, file: str, message: str, field: str = "", line: int | None = None):
        self.file = file
        self.field = field
        self.line = line
        self.message = message
        where = file + (f":{line}" if line else "")
        super().__init__(f"{where}: {field + ': ' if field else ''}{message}")


class PolicyLoadError(LlmAuthzError):
    """Policies could not be read or compiled."""


class PolicyError(LlmAuthzError):
    """Evaluation failed: a builtin error, a conflict, a bad result shape, an unavailable engine."""


class EngineUnavailable(PolicyError):
    """The engine could not be reached (the OPA sidecar is down, say)."""


class QuotaUnavailable(PolicyError):
    """The quota counter (Redis) could not be reached: deny rather than serve without limits."""


class AuditWriteError(LlmAuthzError):
    """A decision record could not be made durable; the check must deny."""


class AuditEncodeError(AuditWriteError):
    """A decision record holds a value JSON cannot (lone surrogate, integer beyond 64 bits): it was
    not written, and the caller may write an encodable copy (audit/encodable.py) in its place."""


class JwksError(LlmAuthzError):
    """A JSON Web Key Set could not be read, fetched or used. Never carries key material."""


class AuditKeyError(ConfigError):
    """An audit signing or verification key cannot be read or is not an Ed25519 key."""


class AuditFormatError(LlmAuthzError):
    """An audit log file cannot be read as audit records; names the file and line."""

    def __init__(self, file: str, line: int, message: str):
        self.file = file
        self.line = line
        self.message = message
        super().__init__(f"{file}:{line}: {message}")


class BundleError(PolicyLoadError):
    """An OPA bundle cannot be used: unreadable, outside its roots, unsigned or wrongly signed."""


class BundleSignatureError(BundleError):
    """A bundle's .signatures.json is missing, not verifiable with the key, or does not match its files."""
