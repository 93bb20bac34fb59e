"""llm-authz: a policy decision service for LLM and model-inference APIs behind Envoy ext_authz."""

__version__ = "0.1.0"
