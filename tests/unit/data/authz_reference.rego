# The first version of the default policy (policies/rego/llm/authz.rego), kept unchanged as the
# reference its faster rewrite is held to by tests/unit/test_default_policy.py (changed only where the
# contract did: a cut-short body is 413 on every route). Not loaded by the
# service.
package llm.authz_reference

import rego.v1

order := [
	"missing_credential", "invalid_credential", "tenant_mismatch", "network_not_allowed",
	"bad_request", "payload_too_large", "route_not_allowed", "insufficient_scope",
	"model_not_allowed", "operation_not_allowed", "max_tokens_exceeded", "credential_anomaly", "rate_limited",
]

status_of := {
	"missing_credential": 401, "invalid_credential": 401, "tenant_mismatch": 403,
	"network_not_allowed": 403, "bad_request": 400, "payload_too_large": 413,
	"route_not_allowed": 403, "insufficient_scope": 403, "model_not_allowed": 403,
	"operation_not_allowed": 403, "max_tokens_exceeded": 403, "credential_anomaly": 403, "rate_limited": 429,
}

tenant := data.tenants[input.identity.tenant] if input.identity.authenticated

grant := tenant.models[input.model.name]

# ---- identity ---------------------------------------------------------------------------------

reasons contains "missing_credential" if {
	not input.identity.authenticated
	input.identity.method == "none"
	input.identity.error == "missing_credential"
}

reasons contains "invalid_credential" if {
	not input.identity.authenticated
	not input.identity.error == "missing_credential"
}

reasons contains "tenant_mismatch" if {
	input.identity.authenticated
	not tenant
}

reasons contains "tenant_mismatch" if {
	is_string(input.tenant.hint)
	input.tenant.hint != input.identity.tenant
}

# ---- network ----------------------------------------------------------------------------------

reasons contains "network_not_allowed" if {
	tenant
	not source_allowed
}

source_allowed if {
	is_string(input.source.address)
	some cidr in tenant.network.allowed_cidrs
	net.cidr_contains(cidr, input.source.address)
}

# ---- request shape and size -------------------------------------------------------------------

reasons contains "bad_request" if is_string(input.payload.error)

reasons contains "payload_too_large" if {
	tenant
	input.payload.bytes > tenant.limits.max_body_bytes
}

# A cut-short body cannot show which model it names.
# (Fields the service sets to null are tested with is_string: in Rego `not null` is false.)
reasons contains "payload_too_large" if input.payload.truncated == true

reasons contains "route_not_allowed" if not is_string(input.model.operation)

# ---- grants -----------------------------------------------------------------------------------

reasons contains "insufficient_scope" if {
	tenant
	not input.model.operation in {"list_models", "model_metadata", "server_metadata"}
	some scope in tenant.scopes_required
	not scope in input.identity.scopes
}

reasons contains "insufficient_scope" if {
	tenant
	input.model.operation in {"list_models", "model_metadata", "server_metadata"}
	not "models:read" in input.identity.scopes
}

reasons contains "model_not_allowed" if {
	tenant
	is_string(input.model.operation)
	not input.model.operation in {"list_models", "server_metadata"}
	not grant
	not is_string(input.payload.error) # an unreadable body names no model worth reporting
}

reasons contains "operation_not_allowed" if {
	grant
	not input.model.operation in {"list_models", "model_metadata", "server_metadata"}
	not input.model.operation in grant.operations
}

token_limit := grant.max_tokens

token_limit := tenant.limits.max_tokens if not grant.max_tokens

reasons contains "max_tokens_exceeded" if {
	grant
	input.payload.max_tokens > token_limit
}

# ---- quotas (input.quota: the request's token buckets before it; null when quotas are off) ----

reasons contains "rate_limited" if {
	some bucket in input.quota.buckets
	bucket.available < bucket.cost
}

# ---- credential anomalies (input.signals; off unless the tenant sets `signals:`) -----------

anomalies contains "impossible_travel" if {
	tenant.signals.travel_minutes > 0
	input.signals.network.last.seconds_ago < tenant.signals.travel_minutes * 60
	moved(input.signals.network.last, input.signals.network)
}

moved(a, b) if {
	is_string(a.country)
	is_string(b.country)
	a.country != b.country
}

moved(a, b) if {
	is_string(a.asn)
	is_string(b.asn)
	a.asn != b.asn
}

anomalies contains "concurrent_networks" if input.signals.concurrency.networks > tenant.signals.max_concurrent_networks

anomalies contains "countries" if count(input.signals.network.recent.countries) > tenant.signals.max_countries

anomalies contains "baseline" if {
	input.signals.baseline.established
	input.signals.baseline.score > tenant.signals.max_score
}

reasons contains "credential_anomaly" if {
	tenant.signals.action == "deny"
	count(anomalies) > 0
}

flags contains "credential_anomaly" if {
	tenant.signals.action == "flag"
	count(anomalies) > 0
}

default anomaly_fields := {}

anomaly_fields := {"anomalies": sort([a | some a in anomalies]), "flags": sort([f | some f in flags])} if count(anomalies) > 0

# ---- the decision -----------------------------------------------------------------------------

ordered := [r | some r in order; r in reasons]

allow if count(reasons) == 0

default decision := {"allow": false, "status": 500, "reasons": ["policy_error"]}

decision := object.union({
	"allow": true,
	"status": 200,
	"reasons": [],
	"headers": object.union(
		{"x-llm-authz-tier": tenant.tier},
		{"x-llm-authz-models": concat(",", sort(object.keys(tenant.models))) | input.model.operation == "list_models"},
	),
	"obligations": {"max_tokens": token_limit},
}, anomaly_fields) if allow

decision := object.union({
	"allow": false,
	"status": status_of[ordered[0]],
	"reasons": ordered,
}, anomaly_fields) if not allow
