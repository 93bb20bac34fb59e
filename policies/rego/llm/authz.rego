# llm-authz default policy: deny by default, least privilege per tenant, model and operation.
#
# Every failed condition adds a reason. The request is allowed only when no reason is found.
# Status and error code come from the first reason in `order` (the contract's table).
# The tenant's file is data.tenants[id]; the verified caller is input.identity.
#
# `allow` states every condition positively in one rule body, so the common case (allowed)
# is decided without building the set of reasons; `reasons` is evaluated only to explain a
# deny. The two say the same thing: allow holds exactly when no reason is found (for every
# input document the service builds), and tests/unit/test_default_policy.py holds the decision
# to the first version of this policy over every combination of the conditions.
package llm.authz

import rego.v1

order := [
	"missing_credential", "invalid_credential", "tenant_mismatch", "network_not_allowed",
	"bad_request", "payload_too_large", "route_not_allowed", "insufficient_scope",
	"model_not_allowed", "operation_not_allowed", "max_tokens_exceeded", "credential_anomaly",
	"rate_limited",
]

status_of := {
	"missing_credential": 401, "invalid_credential": 401, "tenant_mismatch": 403,
	"network_not_allowed": 403, "bad_request": 400, "payload_too_large": 413,
	"route_not_allowed": 403, "insufficient_scope": 403, "model_not_allowed": 403,
	"operation_not_allowed": 403, "max_tokens_exceeded": 403, "credential_anomaly": 403,
	"rate_limited": 429,
}

tenant := data.tenants[input.identity.tenant] if input.identity.authenticated

# Read-only operations (GET, no body): list the models, read one model's metadata or readiness,
# read the server's health. They need the `models:read` scope instead of the tenant's
# scopes_required, so a key that may list models need not be a key that may run them.
read_operations := {"list_models", "model_metadata", "server_metadata"}

model_free_operations := {"list_models", "server_metadata"}

read_scope := "models:read"

reading if input.model.operation in read_operations

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

reasons contains "tenant_mismatch" if hint_mismatch

hint_mismatch if {
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

# A cut-short body cannot show what it asks for: the model, max_tokens, even its own size.
# Nothing may be allowed on facts past the cut, also when the model is in the path.
# (Fields the service sets to null are tested with is_string: in Rego `not null` is false.)
reasons contains "payload_too_large" if body_cut_short

body_cut_short if input.payload.truncated == true

reasons contains "route_not_allowed" if not is_string(input.model.operation)

# ---- grants -----------------------------------------------------------------------------------

reasons contains "insufficient_scope" if {
	tenant
	scope_missing
}

scope_missing if {
	not reading
	some scope in tenant.scopes_required
	not scope in input.identity.scopes
}

scope_missing if {
	reading
	not read_scope in input.identity.scopes
}

reasons contains "model_not_allowed" if {
	tenant
	is_string(input.model.operation)
	not input.model.operation in model_free_operations
	not grant
	not is_string(input.payload.error) # an unreadable body names no model worth reporting
}

# Any grant on a model lets a models:read credential read that model's metadata.
reasons contains "operation_not_allowed" if {
	grant
	not reading
	not input.model.operation in grant.operations
}

token_limit := grant.max_tokens

token_limit := tenant.limits.max_tokens if not grant.max_tokens

reasons contains "max_tokens_exceeded" if tokens_over_limit

tokens_over_limit if {
	grant
	input.payload.max_tokens > token_limit
}

# ---- quotas (input.quota: the request's token buckets before it; null when quotas are off) ----

reasons contains "rate_limited" if quota_spent

# A bucket (tenant, credential or model; requests or tokens) without room for this request.
quota_spent if {
	some bucket in input.quota.buckets
	bucket.available < bucket.cost
}

# ---- credential anomalies (input.signals; off unless the tenant file sets `signals:`) --------

signal_settings := tenant.signals

# The last use was from another country (or AS) too recently for the same holder to have moved.
anomalies contains "impossible_travel" if {
	signal_settings.travel_minutes > 0
	last := input.signals.network.last
	last.seconds_ago < signal_settings.travel_minutes * 60
	moved(last, {"country": input.signals.network.country, "asn": input.signals.network.asn})
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

anomalies contains "concurrent_networks" if {
	input.signals.concurrency.networks > signal_settings.max_concurrent_networks
}

anomalies contains "countries" if {
	count(input.signals.network.recent.countries) > signal_settings.max_countries
}

anomalies contains "baseline" if {
	input.signals.baseline.established
	input.signals.baseline.score > signal_settings.max_score
}

anomaly_found if some _ in anomalies

anomaly_denied if {
	signal_settings.action == "deny"
	anomaly_found
}

reasons contains "credential_anomaly" if anomaly_denied

flags contains "credential_anomaly" if {
	signal_settings.action == "flag"
	anomaly_found
}

# ---- conditions of your own -------------------------------------------------------------------
# Add them in any module of this package as `extra_reasons contains "name" if {...}`: each one
# denies and is listed after the built-in reasons. Its status is 403 unless the module gives one:
# `extra_status["name"] := 402` (a built-in reason keeps the contract's status).

reasons contains r if some r in data.llm.authz.extra_reasons

extra_reason_found if some _ in data.llm.authz.extra_reasons

# ---- the decision -----------------------------------------------------------------------------

# Every condition above, in the same order, stated positively. A negated condition goes
# through a rule of its own whenever a value in it may be missing (a tenant without a quota,
# input.quota null): in Rego, `not x > y` is undefined, not true, when x or y is undefined.
allow if {
	input.identity.authenticated
	t := data.tenants[input.identity.tenant]
	t
	not hint_mismatch
	source_allowed
	not is_string(input.payload.error)
	not input.payload.bytes > t.limits.max_body_bytes
	not body_cut_short
	is_string(input.model.operation)
	not scope_missing
	operation_granted
	not tokens_over_limit
	not quota_spent
	not anomaly_denied
	not extra_reason_found
}

operation_granted if {
	g := tenant.models[input.model.name]
	g
	input.model.operation in g.operations
}

operation_granted if {
	input.model.operation == "model_metadata"
	tenant.models[input.model.name]
}

operation_granted if input.model.operation in model_free_operations

# A listing names the tenant's models to the upstream, which can list only those.
upstream_headers := {"x-llm-authz-tier": tenant.tier, "x-llm-authz-models": concat(",", sort([name | some name, _ in tenant.models]))} if {
	input.model.operation == "list_models"
}

upstream_headers := {"x-llm-authz-tier": tenant.tier} if input.model.operation != "list_models"

reason_status := object.union({r: s | some r, s in data.llm.authz.extra_status}, status_of)

ordered := array.concat([r | some r in order; r in reasons], sort([r | some r in reasons; not r in order]))

default decision := {"allow": false, "status": 500, "reasons": ["policy_error"]}

decision := object.union({
	"allow": true,
	"status": 200,
	"reasons": [],
	"headers": upstream_headers,
	"obligations": {"max_tokens": token_limit},
}, anomaly_fields) if allow

decision := object.union({
	"allow": false,
	"status": object.get(reason_status, ordered[0], 403),
	"reasons": ordered,
}, anomaly_fields) if not allow

# What the service counts (llm_authz_credential_anomalies_total) and passes on (x-llm-authz-flags).
default anomaly_fields := {}

anomaly_fields := {"anomalies": sort([a | some a in anomalies]), "flags": sort([f | some f in flags])} if anomaly_found
