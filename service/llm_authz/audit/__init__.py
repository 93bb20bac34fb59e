"""The audit log: every decision, durable, redacted and hash-chained."""
