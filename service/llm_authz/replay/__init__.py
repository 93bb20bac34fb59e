"""Replay: re-evaluate logged decisions against the policy that made them, or against a candidate."""
