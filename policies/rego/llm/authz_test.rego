package llm.authz_test

import rego.v1

import data.llm.authz

tenants := {"acme": {
	"id": "acme",
	"tier": "premium",
	"models": {
		"gpt-4o": {"operations": ["chat"]},
		"text-embed-3": {"operations": ["embeddings"]},
		"small": {"operations": ["chat"], "max_tokens": 100},
	},
	"scopes_required": ["inference:invoke"],
	"limits": {"max_body_bytes": 1000, "max_tokens": 4096},
	"network": {"allowed_cidrs": ["10.0.0.0/8", "127.0.0.1/32"]},
}}

base := {
	"identity": {"authenticated": true, "method": "api_key", "tenant": "acme", "scopes": ["inference:invoke"], "error": null},
	"tenant": {"id": "acme", "hint": null},
	"source": {"address": "10.1.2.3"},
	"model": {"name": "gpt-4o", "operation": "chat", "source": "body"},
	"payload": {"bytes": 200, "truncated": false, "max_tokens": 256, "error": null},
}

with_field(doc, key, patch) := object.union(doc, {key: object.union(doc[key], patch)})

test_allows_a_granted_model if {
	d := authz.decision with input as base with data.tenants as tenants
	d.allow
	d.status == 200
	d.headers["x-llm-authz-tier"] == "premium"
	d.obligations.max_tokens == 4096
}

test_missing_credential_is_401 if {
	d := authz.decision with input as with_field(base, "identity", {"authenticated": false, "method": "none", "tenant": null, "scopes": [], "error": "missing_credential"}) with data.tenants as tenants
	not d.allow
	d.status == 401
	d.reasons[0] == "missing_credential"
}

test_invalid_credential_is_401 if {
	d := authz.decision with input as with_field(base, "identity", {"authenticated": false, "tenant": null, "scopes": [], "error": "invalid_credential"}) with data.tenants as tenants
	d.status == 401
	d.reasons == ["invalid_credential"]
}

test_unknown_tenant_is_tenant_mismatch if {
	d := authz.decision with input as with_field(base, "identity", {"tenant": "ghost"}) with data.tenants as tenants
	d.status == 403
	d.reasons[0] == "tenant_mismatch"
}

test_tenant_hint_must_match if {
	d := authz.decision with input as with_field(base, "tenant", {"hint": "other"}) with data.tenants as tenants
	d.reasons == ["tenant_mismatch"]
}

test_matching_hint_is_fine if {
	d := authz.decision with input as with_field(base, "tenant", {"hint": "acme"}) with data.tenants as tenants
	d.allow
}

test_source_outside_cidrs if {
	d := authz.decision with input as with_field(base, "source", {"address": "192.0.2.1"}) with data.tenants as tenants
	d.reasons == ["network_not_allowed"]
	d.status == 403
}

test_source_without_ip_is_not_allowed if {
	d := authz.decision with input as with_field(base, "source", {"address": null}) with data.tenants as tenants
	d.reasons == ["network_not_allowed"]
}

test_bad_body_is_400 if {
	d := authz.decision with input as with_field(base, "payload", {"error": "duplicate_key"}) with data.tenants as tenants
	d.status == 400
	d.reasons == ["bad_request"]
}

test_body_over_limit_is_413 if {
	d := authz.decision with input as with_field(base, "payload", {"bytes": 1001}) with data.tenants as tenants
	d.status == 413
	d.reasons == ["payload_too_large"]
}

test_truncated_body_with_model_in_body_is_413 if {
	d := authz.decision with input as with_field(base, "payload", {"truncated": true}) with data.tenants as tenants
	d.reasons == ["payload_too_large"]
}

test_truncated_body_with_model_in_path_is_413_too if {
	doc := with_field(with_field(base, "payload", {"truncated": true}), "model", {"source": "path"})
	d := authz.decision with input as doc with data.tenants as tenants
	not d.allow
	d.status == 413
	d.reasons == ["payload_too_large"]
}

test_unknown_route if {
	d := authz.decision with input as with_field(base, "model", {"operation": null, "name": null}) with data.tenants as tenants
	d.reasons == ["route_not_allowed"]
}

test_missing_scope if {
	d := authz.decision with input as with_field(base, "identity", {"scopes": ["other"]}) with data.tenants as tenants
	d.reasons == ["insufficient_scope"]
}

test_model_not_granted if {
	d := authz.decision with input as with_field(base, "model", {"name": "gpt-5"}) with data.tenants as tenants
	d.reasons == ["model_not_allowed"]
	d.status == 403
}

test_operation_not_granted if {
	d := authz.decision with input as with_field(base, "model", {"name": "text-embed-3"}) with data.tenants as tenants
	d.reasons == ["operation_not_allowed"]
}

test_max_tokens_over_tenant_limit if {
	d := authz.decision with input as with_field(base, "payload", {"max_tokens": 5000}) with data.tenants as tenants
	d.reasons == ["max_tokens_exceeded"]
}

test_per_model_max_tokens_narrows_the_limit if {
	d := authz.decision with input as with_field(with_field(base, "model", {"name": "small"}), "payload", {"max_tokens": 101}) with data.tenants as tenants
	d.reasons == ["max_tokens_exceeded"]
}

test_every_reason_is_listed_first_row_decides if {
	doc := with_field(with_field(base, "payload", {"bytes": 5000, "max_tokens": 99999}), "model", {"name": "gpt-5"})
	d := authz.decision with input as doc with data.tenants as tenants
	d.reasons == ["payload_too_large", "model_not_allowed"]
	d.status == 413
}

bucket(tier, unit, available, cost) := {
	"tier": tier, "name": "n", "unit": unit, "per_minute": 60, "burst": 60,
	"available": available, "cost": cost, "remaining": 0, "reset_seconds": 1,
}

test_a_request_bucket_without_room_is_429 if {
	q := {"exceeded": true, "buckets": [bucket("tenant", "requests", 5, 1), bucket("credential", "requests", 0, 1)]}
	d := authz.decision with input as object.union(base, {"quota": q}) with data.tenants as tenants
	d.status == 429
	d.reasons == ["rate_limited"]
}

test_a_token_bucket_without_room_is_429 if {
	q := {"exceeded": true, "buckets": [bucket("model", "tokens", 100, 101)]}
	d := authz.decision with input as object.union(base, {"quota": q}) with data.tenants as tenants
	d.reasons == ["rate_limited"]
}

test_quota_with_room_no_buckets_or_off_is_fine if {
	q := {"exceeded": false, "buckets": [bucket("tenant", "requests", 1, 1), bucket("model", "tokens", 500, 101)]}
	authz.decision.allow with input as object.union(base, {"quota": q}) with data.tenants as tenants
	authz.decision.allow with input as object.union(base, {"quota": {"exceeded": false, "buckets": []}}) with data.tenants as tenants
	authz.decision.allow with input as object.union(base, {"quota": null}) with data.tenants as tenants
}

# ---- credential anomalies (input.signals) ---------------------------------------------------------

signals(last_country, seconds_ago, score) := {
	"network": {
		"prefix": "81.2.69.0/24", "country": "GB", "asn": null,
		"last": {"prefix": "8.8.8.0/24", "country": last_country, "asn": null, "seconds_ago": seconds_ago},
		"recent": {"countries": ["GB", "US"], "networks": 2},
	},
	"concurrency": {"networks": 1},
	"baseline": {"established": true, "score": score},
}

with_signals(action) := object.union(tenants, {"acme": object.union(tenants.acme, {"signals": {
	"action": action, "max_score": 6, "travel_minutes": 60, "max_concurrent_networks": 3,
}})})

test_a_move_between_countries_within_the_window_is_denied_for_deny if {
	d := authz.decision with input as object.union(base, {"signals": signals("US", 120, 0)}) with data.tenants as with_signals("deny")
	not d.allow
	d.status == 403
	d.reasons == ["credential_anomaly"]
	d.anomalies == ["impossible_travel"]
}

test_the_same_move_is_flagged_for_flag if {
	d := authz.decision with input as object.union(base, {"signals": signals("US", 120, 0)}) with data.tenants as with_signals("flag")
	d.allow
	d.flags == ["credential_anomaly"]
	d.anomalies == ["impossible_travel"]
}

test_observe_and_tenants_without_signals_are_untouched if {
	doc := object.union(base, {"signals": signals("US", 120, 50)})
	d := authz.decision with input as doc with data.tenants as with_signals("observe")
	d.allow
	d.flags == []
	d.anomalies == ["baseline", "impossible_travel"]
	e := authz.decision with input as doc with data.tenants as tenants
	e.allow
	not e.anomalies
}

test_a_move_long_ago_or_within_a_country_is_fine if {
	authz.decision.allow with input as object.union(base, {"signals": signals("US", 7200, 0)}) with data.tenants as with_signals("deny")
	authz.decision.allow with input as object.union(base, {"signals": signals("GB", 5, 0)}) with data.tenants as with_signals("deny")
}

test_a_score_above_the_threshold_is_an_anomaly_once_established if {
	d := authz.decision with input as object.union(base, {"signals": signals("GB", 5, 7)}) with data.tenants as with_signals("deny")
	d.anomalies == ["baseline"]
	not_established := json.patch(signals("GB", 5, 50), [{"op": "replace", "path": "/baseline/established", "value": false}])
	authz.decision.allow with input as object.union(base, {"signals": not_established}) with data.tenants as with_signals("deny")
}

test_too_many_networks_at_once_is_an_anomaly if {
	many := json.patch(signals("GB", 5, 0), [{"op": "replace", "path": "/concurrency/networks", "value": 4}])
	d := authz.decision with input as object.union(base, {"signals": many}) with data.tenants as with_signals("deny")
	d.anomalies == ["concurrent_networks"]
}

# ---- `allow` (the fast path) agrees with `reasons` ------------------------------------------------

test_allow_holds_when_no_reason_is_found if {
	authz.allow with input as base with data.tenants as tenants
	count(authz.reasons) == 0 with input as base with data.tenants as tenants
}

test_allow_fails_on_each_condition if {
	docs := [
		with_field(base, "identity", {"authenticated": false, "method": "none", "tenant": null, "scopes": [], "error": "missing_credential"}),
		with_field(base, "identity", {"tenant": "ghost"}),
		with_field(base, "tenant", {"hint": "other"}),
		with_field(base, "source", {"address": "192.0.2.1"}),
		with_field(base, "source", {"address": null}),
		with_field(base, "payload", {"error": "duplicate_key"}),
		with_field(base, "payload", {"bytes": 1001}),
		with_field(base, "payload", {"truncated": true}),
		with_field(base, "model", {"operation": null, "name": null}),
		with_field(base, "identity", {"scopes": ["other"]}),
		with_field(base, "model", {"name": "gpt-5"}),
		with_field(base, "model", {"name": "text-embed-3"}),
		with_field(base, "payload", {"max_tokens": 5000}),
	]
	every doc in docs {
		not authz.allow with input as doc with data.tenants as tenants
		count(authz.reasons) > 0 with input as doc with data.tenants as tenants
	}
}

test_a_deny_found_early_still_lists_every_reason if {
	doc := with_field(with_field(base, "tenant", {"hint": "other"}), "model", {"name": "gpt-5"})
	d := authz.decision with input as doc with data.tenants as tenants
	d.reasons == ["tenant_mismatch", "model_not_allowed"]
	d.status == 403
}

test_an_unauthenticated_caller_without_a_reason_is_a_policy_error if {
	doc := with_field(base, "identity", {"authenticated": false, "method": "jwt", "tenant": null, "scopes": [], "error": "missing_credential"})
	d := authz.decision with input as doc with data.tenants as tenants
	d.status == 500
	d.reasons == ["policy_error"]
}

test_a_condition_of_your_own_denies_after_the_built_in_ones if {
	d := authz.decision with input as object.union(base, {"payload": object.union(base.payload, {"stream": true})})
		with data.tenants as tenants
		with data.llm.authz.extra_reasons as {"stream_not_allowed"}
	not d.allow
	d.status == 403
	d.reasons == ["stream_not_allowed"]
	e := authz.decision with input as object.union(base, {"model": object.union(base.model, {"name": "gpt-5"})})
		with data.tenants as tenants
		with data.llm.authz.extra_reasons as {"stream_not_allowed"}
	e.reasons == ["model_not_allowed", "stream_not_allowed"]
}

test_a_module_of_your_own_names_its_reasons_status if {
	streaming := object.union(base, {"payload": object.union(base.payload, {"stream": true})})
	d := authz.decision with input as streaming
		with data.tenants as tenants
		with data.llm.authz.extra_reasons as {"stream_not_allowed"}
		with data.llm.authz.extra_status as {"stream_not_allowed": 402}
	d.status == 402
	d.reasons == ["stream_not_allowed"]
	# a built-in reason keeps the contract's status
	e := authz.decision with input as object.union(streaming, {"model": object.union(base.model, {"name": "gpt-5"})})
		with data.tenants as tenants
		with data.llm.authz.extra_reasons as {"stream_not_allowed"}
		with data.llm.authz.extra_status as {"stream_not_allowed": 402, "model_not_allowed": 418}
	e.status == 403
}

# ---- read-only routes: list the models, read a model's metadata, the server's health ----------

reader := with_field(base, "identity", {"scopes": ["models:read"]})

listing(doc) := object.union(doc, {
	"model": {"name": null, "operation": "list_models", "source": null},
	"payload": {"bytes": 0, "truncated": false, "max_tokens": null, "error": null},
})

metadata(doc, name) := object.union(doc, {
	"model": {"name": name, "operation": "model_metadata", "source": "path"},
	"payload": {"bytes": 0, "truncated": false, "max_tokens": null, "error": null},
})

test_models_read_may_list_the_models_and_the_upstream_learns_which if {
	d := authz.decision with input as listing(reader) with data.tenants as tenants
	d.allow
	d.headers["x-llm-authz-models"] == "gpt-4o,small,text-embed-3"
}

test_listing_needs_models_read_not_the_inference_scope if {
	d := authz.decision with input as listing(base) with data.tenants as tenants
	d.status == 403
	d.reasons == ["insufficient_scope"]
}

test_models_read_does_not_run_a_model if {
	d := authz.decision with input as reader with data.tenants as tenants
	d.reasons == ["insufficient_scope"]
}

test_metadata_of_any_granted_model_even_without_that_operation if {
	authz.decision.allow with input as metadata(reader, "text-embed-3") with data.tenants as tenants
	not authz.decision.headers["x-llm-authz-models"] with input as metadata(reader, "text-embed-3") with data.tenants as tenants
}

test_metadata_of_a_model_not_granted_is_model_not_allowed if {
	d := authz.decision with input as metadata(reader, "gpt-5") with data.tenants as tenants
	d.status == 403
	d.reasons == ["model_not_allowed"]
}

test_server_health_needs_models_read if {
	doc := object.union(reader, {"model": {"name": null, "operation": "server_metadata", "source": null}})
	authz.decision.allow with input as doc with data.tenants as tenants
	no_scope := object.union(base, {"model": {"name": null, "operation": "server_metadata", "source": null}})
	authz.decision.reasons == ["insufficient_scope"] with input as no_scope with data.tenants as tenants
}

test_a_listing_is_still_bound_to_the_tenant_and_network if {
	d := authz.decision with input as listing(with_field(reader, "source", {"address": "192.0.2.1"})) with data.tenants as tenants
	d.reasons == ["network_not_allowed"]
	e := authz.decision with input as listing(with_field(reader, "identity", {"authenticated": false, "method": "none", "tenant": null, "scopes": [], "error": "missing_credential"})) with data.tenants as tenants
	e.status == 401
}
