"""Facts read from Envoy's CheckRequest: the HTTP request, the route (model + operation), the body."""
