"""A local stack for trying llm-authz: a demo model server, Envoy and the service (`make run`)."""
