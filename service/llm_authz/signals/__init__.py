"""Behaviour signals per credential (`input.signals`): networks, baselines, concurrency.

Computed before the policy runs, from what earlier checks recorded, and put in the input, so
the audit record holds them and a replay decides exactly as the live check did.
"""

from llm_authz.signals.networks import Network, NetworkLocator
from llm_authz.signals.tracker import Observation, SignalTracker, credential_id

__all__ = ["Network", "NetworkLocator", "Observation", "SignalTracker", "credential_id"]
