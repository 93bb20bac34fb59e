# Every limit of the default policy at its exact value (allowed) and one past it (denied).
# A limit is inclusive: a request that uses exactly what the tenant grants is allowed.
package llm.authz_boundaries_test

import rego.v1

import data.llm.authz
import data.llm.authz_test.base
import data.llm.authz_test.bucket
import data.llm.authz_test.tenants
import data.llm.authz_test.with_field

decide(doc, t) := d if {
	d := authz.decision with input as doc with data.tenants as t
}

test_max_tokens_at_the_tenant_limit_is_allowed if {
	decide(with_field(base, "payload", {"max_tokens": 4096}), tenants).allow
}

test_max_tokens_one_past_the_tenant_limit_is_denied if {
	d := decide(with_field(base, "payload", {"max_tokens": 4097}), tenants)
	not d.allow
	d.reasons == ["max_tokens_exceeded"]
	d.status == 403
}

test_max_tokens_at_the_model_limit_is_allowed if {
	decide(with_field(with_field(base, "model", {"name": "small"}), "payload", {"max_tokens": 100}), tenants).allow
}

test_max_tokens_one_past_the_model_limit_is_denied if {
	d := decide(with_field(with_field(base, "model", {"name": "small"}), "payload", {"max_tokens": 101}), tenants)
	d.reasons == ["max_tokens_exceeded"]
}

test_body_at_the_byte_limit_is_allowed if {
	decide(with_field(base, "payload", {"bytes": 1000}), tenants).allow
}

test_body_one_byte_past_the_limit_is_denied if {
	d := decide(with_field(base, "payload", {"bytes": 1001}), tenants)
	d.reasons == ["payload_too_large"]
	d.status == 413
}

test_a_request_bucket_with_exactly_room_for_the_request_allows if {
	q := {"exceeded": false, "buckets": [bucket("tenant", "requests", 1, 1)]}
	decide(object.union(base, {"quota": q}), tenants).allow
}

test_a_request_bucket_one_short_is_429 if {
	q := {"exceeded": true, "buckets": [bucket("credential", "requests", 0, 1)]}
	d := decide(object.union(base, {"quota": q}), tenants)
	d.reasons == ["rate_limited"]
	d.status == 429
}

test_a_token_bucket_with_exactly_room_for_the_request_allows if {
	q := {"exceeded": false, "buckets": [bucket("model", "tokens", 500, 500)]}
	decide(object.union(base, {"quota": q}), tenants).allow
}

test_a_token_bucket_one_token_short_is_429 if {
	q := {"exceeded": true, "buckets": [bucket("tenant", "tokens", 499, 500)]}
	d := decide(object.union(base, {"quota": q}), tenants)
	d.reasons == ["rate_limited"]
	d.status == 429
}

# A limit met exactly is not listed as a reason, even when the request is denied for another one.
test_a_body_at_the_limit_adds_no_reason_to_another_deny if {
	d := decide(with_field(with_field(base, "payload", {"bytes": 1000}), "model", {"name": "gpt-5"}), tenants)
	d.reasons == ["model_not_allowed"]
}

test_max_tokens_at_the_limit_adds_no_reason_to_another_deny if {
	d := decide(with_field(with_field(base, "payload", {"max_tokens": 4096}), "source", {"address": "192.0.2.1"}), tenants)
	d.reasons == ["network_not_allowed"]
}

# A caller that failed authentication is denied even when its identity names a tenant.
test_an_unauthenticated_identity_naming_a_tenant_is_denied if {
	doc := with_field(base, "identity", {"authenticated": false, "method": "api_key", "error": "credential_expired"})
	d := decide(doc, tenants)
	not d.allow
	d.reasons == ["invalid_credential"]
}

# ---- credential anomaly thresholds: met exactly is allowed, one past is denied ------------------

signal_tenants(settings) := object.union(tenants, {"acme": object.union(tenants.acme, {"signals": object.union(
	{"action": "deny", "max_score": 6, "travel_minutes": 60, "max_concurrent_networks": 3, "max_countries": 2},
	settings,
)})})

signal_doc(patches) := object.union(base, {"signals": json.patch(data.llm.authz_test.signals("GB", 7200, 0), patches)})

test_a_move_exactly_at_the_travel_window_is_allowed if {
	decide(signal_doc([{"op": "replace", "path": "/network/last/country", "value": "US"}, {"op": "replace", "path": "/network/last/seconds_ago", "value": 3600}]), signal_tenants({})).allow
}

test_a_move_one_second_inside_the_travel_window_is_denied if {
	d := decide(signal_doc([{"op": "replace", "path": "/network/last/country", "value": "US"}, {"op": "replace", "path": "/network/last/seconds_ago", "value": 3599}]), signal_tenants({}))
	d.reasons == ["credential_anomaly"]
}

test_a_move_between_autonomous_systems_in_one_country_is_denied if {
	doc := signal_doc([
		{"op": "replace", "path": "/network/last/country", "value": "GB"}, {"op": "replace", "path": "/network/last/seconds_ago", "value": 60},
		{"op": "replace", "path": "/network/last/asn", "value": "AS1"}, {"op": "replace", "path": "/network/asn", "value": "AS2"},
	])
	decide(doc, signal_tenants({})).reasons == ["credential_anomaly"]
}

test_the_same_autonomous_system_and_country_is_no_move if {
	doc := signal_doc([
		{"op": "replace", "path": "/network/last/country", "value": "GB"}, {"op": "replace", "path": "/network/last/seconds_ago", "value": 60},
		{"op": "replace", "path": "/network/last/asn", "value": "AS1"}, {"op": "replace", "path": "/network/asn", "value": "AS1"},
	])
	decide(doc, signal_tenants({})).allow
}

test_concurrent_networks_at_the_limit_are_allowed_and_one_more_denied if {
	decide(signal_doc([{"op": "replace", "path": "/concurrency/networks", "value": 3}]), signal_tenants({})).allow
	not decide(signal_doc([{"op": "replace", "path": "/concurrency/networks", "value": 4}]), signal_tenants({})).allow
}

test_countries_at_the_limit_are_allowed_and_one_more_denied if {
	decide(signal_doc([]), signal_tenants({})).allow # GB and US: 2
	not decide(signal_doc([{"op": "replace", "path": "/network/recent/countries", "value": ["GB", "US", "FR"]}]), signal_tenants({})).allow
}

test_a_baseline_score_at_the_limit_is_allowed_and_above_it_denied if {
	decide(signal_doc([{"op": "replace", "path": "/baseline/score", "value": 6}]), signal_tenants({})).allow
	not decide(signal_doc([{"op": "replace", "path": "/baseline/score", "value": 6.5}]), signal_tenants({})).allow
}
