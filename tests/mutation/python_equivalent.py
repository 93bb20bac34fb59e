"""Surviving Python mutants: the tests outside the mutation selection that kill them, or the reason
they cannot change what a user sees.

A mutant is named by (module.function as in `mutmut results`, without the `llm_authz.` prefix and
with methods as Class.method; the original line(s); the mutated line(s)), both as `mutmut show`
prints them, stripped. The mutated text is part of the name, so an entry stops matching (and the
survivor shows as unexplained) as soon as its mutant changes.
"""

from __future__ import annotations

from collections.abc import Callable

_INT_LENGTH = ("the length test only spares int() a huge number: every JSON integer of 21 or 22 characters is "
               "outside the 64-bit range (>= 10**20, or <= -10**19), so the range test refuses it with the same words")
_NO_X = ("the scan looks only outside strings, where JSON has no 'X' (literals are true, false, null and "
         "numbers): the added characters never occur there")
_LOG_ONLY = ("the wording or the arguments of an operator log line: no answer, record, metric or later "
             "behaviour depends on it (a bad format only makes logging print its own error)")
_THREAD_NAME = "the name of the background thread labels it in thread dumps only"
_CODEC_CASE = "codec names are case-insensitive: the same codec"
_FALSY = "the value is only ever tested for truth, where None reads as False"
_VALUE_ERROR_TEXT = ("the caller (peer_principal) catches this ValueError and answers with its own fixed "
                     "description; the message is never shown or logged")
_NO_SURROGATES = ("the error handler only matters for a lone surrogate, and a key comes from a CheckRequest header: "
                  "protobuf strings are valid UTF-8, which cannot hold one (codec names ignore case)")
_UNREACHABLE_PAYLOAD = ("unreachable: the verified payload is the very segment peek decoded (PyJWT verifies those "
                        "bytes and both are parsed by orjson), so it is a dict and routes to the same binding")
_UNREACHABLE_ISSUER = ("unreachable: _binding found the binding under this very issuer (by_issuer[iss]), and "
                       "verify checks the verified payload maps to the same binding, so entry.issuer == iss here")


def _message_mutants(function: str, call: str, text: str, reason: str) -> dict[tuple[str, str, str], str]:
    """The three mutants mutmut makes of a string argument: None, XX..XX and upper case."""
    original = f'{call}("{text}")'
    return {(function, original, mutated): reason
            for mutated in (f"{call}(None)", f'{call}("XX{text}XX")', f'{call}("{text.upper()}")')}


EXPLAINED: dict[tuple[str, str, str], str] = {
    ("identity.api_keys.new_key", "key = KEY_PREFIX + secrets.token_urlsafe(32)",
     "key = KEY_PREFIX + secrets.token_urlsafe(None)"):
        "secrets.token_urlsafe(None) takes its default, 32 random bytes: the same key length and entropy",
    ("identity.mtls._split", "escaped = False", "escaped = None"): _FALSY,
    **{("identity.api_keys.ApiKeyIndex.verify",
        'digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()', mutated): _NO_SURROGATES
       for mutated in ('digest = hashlib.sha256(key.encode("utf-8", )).hexdigest()',
                       'digest = hashlib.sha256(key.encode("UTF-8", "surrogateescape")).hexdigest()',
                       'digest = hashlib.sha256(key.encode("utf-8", "XXsurrogateescapeXX")).hexdigest()',
                       'digest = hashlib.sha256(key.encode("utf-8", "SURROGATEESCAPE")).hexdigest()')},
    ("decision._status", "if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:",
     "if isinstance(value, bool) and not isinstance(value, int) or not 200 <= value <= 599:"):
        "a bool is 0 or 1, outside 200..599: the range test refuses it anyway",
    **_message_mutants("identity.mtls._split", "raise ValueError", "unbalanced quotes", _VALUE_ERROR_TEXT),
    **_message_mutants("identity.mtls.xfcc_uris", "raise ValueError", "too large", _VALUE_ERROR_TEXT),
    **_message_mutants("identity.mtls.xfcc_uris", "raise ValueError", "a field without '='", _VALUE_ERROR_TEXT),
    **_message_mutants("identity.jwt.JwtVerifier._identity", "raise _reject", "the token's issuer is not trusted",
                       _UNREACHABLE_ISSUER),
    ("identity.jwt.JwtVerifier._binding",
     'named = [b for b in bindings if payload.get(b.entry.tenant_claim or "") == b.tenant]',
     'named = [b for b in bindings if payload.get(b.entry.tenant_claim or "XXXX") == b.tenant]'):
        "the default is never used: tenants that share an issuer must all name tenant_claim (tenants.py refuses "
        "the files otherwise), and with one binding this line is not reached",
    ("identity.jwt._segment", 'return orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))',
     'return orjson.loads(base64.urlsafe_b64decode(part + "=" * (+len(part) % 4)))'):
        "the padding differs only for a length of 1 or 3 mod 4: 1 is not base64 either way, and for 3 the "
        "decoder ignores the excess '=' (same bytes)",
    ("identity.jwt.JwtVerifier.verify",
     "if not isinstance(payload, dict) or self._binding(payload) is not binding:",
     "if not isinstance(payload, dict) and self._binding(payload) is not binding:"): _UNREACHABLE_PAYLOAD,
    **_message_mutants("identity.jwt.JwtVerifier.verify", "raise _reject", "the token is malformed",
                       _UNREACHABLE_PAYLOAD),
    ("identity.jwks.RemoteKeySource._download", 'with self._client.stream("GET", self.url) as response:',
     'with self._client.stream("get", self.url) as response:'): "httpx upper-cases the method: the same GET",
    ("identity.jwks.RemoteKeySource._download", "give_up = time.monotonic() + 2 * s.fetch_timeout_seconds",
     "give_up = time.monotonic() + 3 * s.fetch_timeout_seconds"):
        "only moves the bound on a trickling response from 2x to 3x the fetch timeout; the fetch runs in the "
        "background thread and no check waits for it past its own deadline "
        "(test_a_slow_idp_never_holds_a_check_past_its_deadline)",
    ("facts.payload._conversation_facts", "images = False", "images = None"):
        "`images` only feeds `images or ...`, and the last `or` (has_images) yields the bool on its right",
    **{("response._allow",
        "response = external_auth_pb2.CheckResponse(status=_STATUS_OK, dynamic_metadata=_metadata(decision, ctx))",
        mutated): "an unset google.rpc.Status reads as code 0, OK: Envoy allows the same (it reads status.code)"
       for mutated in ("response = external_auth_pb2.CheckResponse(status=None, dynamic_metadata=_metadata(decision, ctx))",
                       "response = external_auth_pb2.CheckResponse(dynamic_metadata=_metadata(decision, ctx))")},
    ("response._allow",
     '_add_headers(ok.response_headers_to_add, _appended(decision.extra_response_headers, {DECISION_HEADER: ""}), _APPEND)',
     '_add_headers(ok.response_headers_to_add, _appended(decision.extra_response_headers, {DECISION_HEADER: "XXXX"}), _APPEND)'):
        "_appended excludes by header name only: the value in the dict is never read",
    ("check._fill_context", 'grant = t.models.get(ctx.model or "")', 'grant = t.models.get(ctx.model or "XXXX")'):
        "differs only for a request naming no model at a tenant granting a model literally named XXXX, and then "
        "only in the limit a max_tokens_exceeded message quotes",
    ("check.Checker.check", "result: Any = None", 'result: Any = ""'):
        "never read as it is: the evaluation, the PolicyError branch and the except branch each set `result`",
    ("check.Checker.check", "ctx = CheckContext(decision_id=decision_id, request_headers={})",
     "ctx = CheckContext(decision_id=decision_id, request_headers=None)"):
        "request_headers is read only to allow, and a check that fails before reading the request denies "
        "(it is replaced by the request's headers as soon as they are read)",
    ("facts.payload._shallow", "in_string = escaped = False", "in_string = escaped = None"): _FALSY,
    ("facts.payload._shallow", "escaped = False", "escaped = None"): _FALSY,
    ("facts.payload._shallow", "in_string = False", "in_string = None"): _FALSY,
    ("facts.payload._shallow", 'elif ch in "[{":', 'elif ch in "XX[{XX":'): _NO_X,
    ("facts.payload._shallow", 'elif ch in "]}":', 'elif ch in "XX]}XX":'): _NO_X,
    **{("identity.jwks.RemoteKeySource.__init__", original, mutated): "HTTP header names are case-insensitive"
       for original, mutated in (('headers={"user-agent": f"llm-authz/{__version__}",',
                                  'headers={"USER-AGENT": f"llm-authz/{__version__}",'),
                                 ('"accept": "application/jwk-set+json, application/json"})',
                                  '"ACCEPT": "application/jwk-set+json, application/json"})'))},
    ("check._record", "if settings.raw_credentials and doc is not None:",
     "if settings.raw_credentials or doc is not None:"):
        "without raw_credentials the input holds the credential headers already redacted, so the scrub finds "
        "no credential (at most it rewrites a result repeating 'Bearer [redacted]' as '[redacted]')",
    ("check.Checker._observe", "credential = credential_id(identity) if identity.authenticated else None",
     "credential = credential_id(identity) if (identity.authenticated) or True else None"):
        "_observe runs only for a known tenant, and only an authenticated identity has one",
    ("facts.payload._text_chars", 'mime = get_field(inline, "mime_type") or get_field(inline, "mimetype") or ""',
     'mime = get_field(inline, "mime_type") or get_field(inline, "mimetype") or "XXXX"'):
        "a missing media type reads as XXXX instead of empty: neither starts with image/",
    ("facts.payload._int", "if len(text) > 21:", "if len(text) >= 21:"): _INT_LENGTH,
    ("facts.payload._int", "if len(text) > 21:", "if len(text) > 22:"): _INT_LENGTH,
    ("facts.payload._BodyError.__init__", "super().__init__(detail)", "super().__init__(None)"):
        "the exception's own text is never read: every handler takes .code and .detail (extract_payload)",
    ("identity.jwks.ttl_from_cache_control", 'for part in (value or "").split(","):',
     'for part in (value or "XXXX").split(","):'): "without a header the one part, XXXX, names no directive: the default",
    ("identity.jwks.RemoteKeySource._download", "if time.monotonic() > give_up:", "if time.monotonic() >= give_up:"):
        "equal only at one instant of a float clock: the same bound",
    ("identity.jwks.RemoteKeySource._download",
     'ttl = ttl_from_cache_control(response.headers.get("cache-control"), s)',
     'ttl = ttl_from_cache_control(response.headers.get("CACHE-CONTROL"), s)'): "httpx reads header names in any case",
    ("identity.jwks.RemoteKeySource._download", "keys, problems = parse_jwks(bytes(body), strict=False)",
     "keys, problems = parse_jwks(bytes(body), strict=None)"): _FALSY,
    ("identity.jwks.RemoteKeySource.key_for", "if remaining > 0:", "if remaining >= 0:"):
        "with exactly 0 s left, event.wait(0) returns at once: no wait either way",
    ("identity.jwks.RemoteKeySource.__init__", "timeout=settings.fetch_timeout_seconds, follow_redirects=False,",
     "timeout=settings.fetch_timeout_seconds, follow_redirects=None,"):
        "httpx tests follow_redirects for truth: None does not follow redirects either",
    ("identity.jwks.RemoteKeySource.__init__", "self._closed = False", "self._closed = None"): _FALSY,
    ("identity.jwks.RemoteKeySource.__init__", "self._next_refresh = 0.0", "self._next_refresh = 1.0"):
        "the first fetch is due once the monotonic clock reads 1.0: it counts seconds since boot, so it "
        "reads more on any running host (and the tests' clock starts at 1000)",
    ("audit.redaction._escape", 'return token.replace("~", "~0").replace("/", "~1")',
     'return token.replace("XX~XX", "~0").replace("/", "~1")'):
        "only credential header names are escaped, and none of them holds '~' or '/' (CREDENTIAL_HEADERS)",
    ("audit.redaction._escape", 'return token.replace("~", "~0").replace("/", "~1")',
     'return token.replace("~", "XX~0XX").replace("/", "~1")'):
        "only credential header names are escaped, and none of them holds '~' or '/' (CREDENTIAL_HEADERS)",
    ("audit.redaction._escape", 'return token.replace("~", "~0").replace("/", "~1")',
     'return token.replace("~", "~0").replace("XX/XX", "~1")'):
        "only credential header names are escaped, and none of them holds '~' or '/' (CREDENTIAL_HEADERS)",
    ("audit.redaction._escape", 'return token.replace("~", "~0").replace("/", "~1")',
     'return token.replace("~", "~0").replace("/", "XX~1XX")'):
        "only credential header names are escaped, and none of them holds '~' or '/' (CREDENTIAL_HEADERS)",
    ("audit.redaction.credential_values", 'headers = doc.get("request", {}).get("headers", {})',
     'headers = doc.get("request", {}).get("headers", None)'):
        "a missing headers object is then not a dict, and the next line reads no headers, as it does for {}",
    ("audit.redaction.credential_values", 'headers = doc.get("request", {}).get("headers", {})',
     'headers = doc.get("request", {}).get("headers", )'):
        "a missing headers object is then not a dict, and the next line reads no headers, as it does for {}",
    ("audit.redaction.credential_values", "if sep and rest.strip():", "if sep or rest.strip():"):
        "without a separator `rest` is empty; with one and nothing after it the mutant adds an empty string, "
        "which the length filter (>= 4) drops",
    ("audit.redaction.scrub_credentials", "if not secrets or result is None:",
     "if not secrets and result is None:"):
        "it only skips a walk that would change nothing: with no secrets scrub returns an equal copy, and "
        "scrub(None) is None",
}

# (function glob, regular expressions the original and the mutated line(s) must match in full, reason).
_ANY = ".*"
EXPLAINED_LINES: list[tuple[str, str, str, str]] = [
    ("identity.jwks.RemoteKeySource._download", r'raise JwksError\((f"HTTP status .*|f"response larger than .*|"response too slow")\)',
     _ANY, "the error text goes into the fetch-failure log line only: " + _LOG_ONLY),
    ("identity.jwks.RemoteKeySource._run", r'log\.exception\("JWKS refresh from %s failed unexpectedly", self\.url\)', _ANY,
     _LOG_ONLY),
    ("identity.jwks.RemoteKeySource._fetch", r'(log\.warning\("JWKS fetch from .*|self\.url, detail, len\(self\._keys\), delay\))', _ANY,
     _LOG_ONLY),
    ("identity.jwks.RemoteKeySource._fetch", r'log\.warning\("JWKS from %s: skipped .*', _ANY, _LOG_ONLY),
    ("identity.jwks.RemoteKeySource._fetch", r'(log\.log\(logging\.INFO if changed .*|self\.url, len\(keys\), " \(key ids changed\)".*)', _ANY,
     _LOG_ONLY),
    ("identity.jwks.RemoteKeySource._fetch", r"detail = str\(exc\) if isinstance\(exc, JwksError\) else type\(exc\)\.__name__", _ANY,
     "`detail` goes into the fetch-failure log line only: " + _LOG_ONLY),
    ("identity.jwks.RemoteKeySource._fetch", r"changed = \{k\.kid for k in keys\.keys\} != \{k\.kid for k in self\._keys\.keys\}", _ANY,
     "`changed` only picks the level and wording of the fetch log line: " + _LOG_ONLY),
    ("check.Checker._refund", r'log\.(warning|exception)\("could not give back the quota of a denied request.*', _ANY,
     _LOG_ONLY),
    ("check.Checker._learn", r'log\.exception\("could not record the request\'s signals"\)', _ANY, _LOG_ONLY),
    ("check._unencodable",
     r'(log\.error\("a decision record held values JSON cannot hold at .*|", "\.join\(safe\["unencodable"\]\[:10\]\)\))',
     _ANY, _LOG_ONLY),
    ("identity.jwks.RemoteKeySource.__init__",
     r'self\._thread = threading\.Thread\(target=self\._run, name="jwks-refresh", daemon=True\)',
     r'self\._thread = threading\.Thread\(target=self\._run, (name=(None|"XXjwks-refreshXX"|"JWKS-REFRESH"), )?daemon=True\)',
     _THREAD_NAME),
    ("identity.resolve.IdentityResolver.from_tenants",
     r'source = StaticKeySource\.from_file\(tf\.resolve\(entry\.jwks_file or ""\)\)', r'.*entry\.jwks_file or "XXXX".*',
     "unreachable: this branch runs for an issuer without jwks_url, and the tenant loader refuses an issuer "
     "with neither jwks_file nor jwks_url, so jwks_file is set here"),
    ("identity.jwks.load_jwks_file", r"raw = fh\.read\(MAX_FILE_BYTES \+ 1\)", r"raw = fh\.read\(None\)",
     "reads an oversized file whole before refusing it with the same error: only the memory of that one "
     "read at load time differs (key files are the operator's, read at start and reload)"),
    ("identity.jwks.load_jwks_file", r"raw = fh\.read\(MAX_FILE_BYTES \+ 1\)", r"raw = fh\.read\(MAX_FILE_BYTES \+ 2\)",
     "a file of MAX_FILE_BYTES + 1 bytes is still over the limit: the same refusal for every size"),
    ("identity.jwks.load_jwks_file", r"return parse_jwks\(raw, strict=True\)\[0\]", r"return parse_jwks\(raw, \)\[0\]",
     "strict=True is parse_jwks's default: the same call"),
    ("identity.jwks.RemoteKeySource.__init__", r".*follow_redirects=False.*", r"(?!.*follow_redirects).*",
     "follow_redirects=False is httpx.Client's default: the same client (test_a_redirect_is_not_followed holds it)"),
    ("audit.redaction.parse_pointer", r'rest = token\.replace\("~0", ""\)\.replace\("~1", ""\)',
     r'rest = token\.replace\("~0", "(XXXX)?"\)\.replace\("~1", "(XXXX)?"\)',
     "`rest` is only searched for a '~' left over: replacing the escapes with any text without one finds the same"),
    ("audit.redaction.redact_input", r'out\["attributes"\] = _copy_http_path\(doc\.get\("attributes", \{\}\)\)',
     r'out\["attributes"\] = _copy_http_path\(doc\.get\("attributes", ?(None)?\)\)',
     "the default is never taken: the one caller (check.py) passes the input the service built, which always "
     "has attributes (input.build_input)"),
    ("audit.redaction._copy_http_path", r"return copy\.deepcopy\(attributes\)", r"return copy\.copy\(attributes\)",
     "for attributes that are not an object no pointer reaches inside them (every built-in pointer names a key "
     "under it), and masks deep-copy the whole input before writing: nothing is written into the shared value"),
    ("decision._llm_authz_shape", r"decision = Decision\(allow=True, status=200, reasons=order_reasons\(reasons\)\)",
     r"decision = Decision\(allow=True, reasons=order_reasons\(reasons\)\)", "200 is Decision.status's default"),
    ("decision._llm_authz_shape", r'decision = _deny\(reasons, _status\(result\.get\("status"\), 0\) or None\)',
     r'decision = _deny\(reasons, _status\(result\.get\("status"\), None\) or None\)',
     "_status gives the default only for an absent status, and `0 or None` is None as `None or None` is"),
    ("facts.payload._pairs", r"if len\(pairs\) > 1 and len\(\{k\.casefold\(\) for k in obj\}\) != len\(pairs\):",
     r"if len\(pairs\) >= 1 and .*",
     "the length test only skips work: one key casefolds to a set of one, so the comparison after it is False"),
    ("check.Checker.check", r"tenant = revision\.tenants\.get\(identity\.tenant\) if identity\.tenant else None",
     r"tenant = revision\.tenants\.get\(identity\.tenant\) if \(identity\.tenant\) or True else None",
     "tenants.get(None) is None, as the else branch gives (tenant ids are never empty: the loader refuses them)"),
    ("check.Checker.check",
     r"signals = self\.signals\.signals\(observation\) if observation is not None else None",
     r"signals = self\.signals\.signals\(observation\) if \(observation is not None\) or True else None",
     "unreachable: _observe gives None only for an identity that is not authenticated, and such an identity has "
     "no tenant (identity.model.invalid / missing), so this line is not reached for it"),
    ("check.Checker.check", r"if deadline is not None and time\.monotonic\(\) > deadline:",
     r"if deadline is not None and time\.monotonic\(\) >= deadline:", "equal only at one instant of a float clock"),
    ("check.Checker.check", r"latency_us = int\(\(time\.perf_counter\(\) - started\) \* 1e6\)",
     r"latency_us = int\(\(time\.perf_counter\(\) - started\) \* 1000001\.0\)",
     "a millionth more: under one microsecond for any check shorter than a second"),
    ("check.Checker.check", r"recorded = False", r"recorded = None", _FALSY),
    ("facts.payload._fill", r'stream = top\.get\("stream", False\)', r'stream = top\.get\("stream", (None)?\)',
     "an absent stream read as None is set to False on the next line, as null is"),
    ("facts.payload._fill", r"stream = False", r"stream = None",
     "`out.stream = stream or route.stream`: None or x is x, as False or x is"),
    ("facts.payload.parse_json_strict", r'bracket_heavy = text\.count\("\["\) \+ text\.count\("\{"\) > max_depth',
     r'bracket_heavy = text\.count\("\["\) \+ text\.count\("\{"\) >= max_depth',
     "with exactly max_depth brackets in the whole text no value is nested deeper than max_depth: the scan "
     "this adds passes"),
    ("facts.payload.parse_json_strict", r'raise _BodyError\("malformed_json", f"invalid JSON: \{str\(exc\)\[:120\]\}"\) from None',
     r'raise _BodyError\("malformed_json", f"invalid JSON: \{str\(exc\)\[:121\]\}"\) from None',
     "json's messages ('Expecting value: line 1 column 5 (char 4)') are far shorter than 120 characters: the "
     "cut never applies"),
    ("identity.credentials.presented_credential", r'return PresentedCredential\("api_key", api_key\)',
     r'return PresentedCredential\((None|"XXapi_keyXX"|"API_KEY"), api_key\)',
     "PresentedCredential.kind is only compared with 'bearer' (resolve.py): any other value is an API key"),
    ("identity.jwt.JwtVerifier.__init__", r".*leeway_seconds: float = 30\.0.*", r".*leeway_seconds: float = 31\.0.*",
     "every verifier with issuers is built by IdentityResolver.from_tenants with the config's leeway "
     "(jwt_leeway_seconds, default 30: test_the_resolver_built_from_tenants_*); the default serves the empty one"),
    ("identity.resolve.IdentityResolver.resolve",
     r"peer = self\.mtls\.identify\(principal\) if principal else None",
     r"peer = self\.mtls\.identify\(principal\) if \(principal\) or True else None",
     "identify(None) finds no tenant (no SPIFFE ID is None): None, as the else branch gives"),
    ("facts.payload._declared_length", r'declared = facts\.headers\.get\("content-length", ""\)\.strip\(\)',
     r'declared = facts\.headers\.get\("content-length", "XXXX"\)\.strip\(\)',
     "a missing length read as XXXX is not digits either: None, as for an empty one"),
    ("facts.payload.body_cut_short",
     r'if facts\.headers\.get\(PARTIAL_BODY_HEADER, ""\)\.strip\(\)\.lower\(\) == "true":',
     r'if facts\.headers\.get\(PARTIAL_BODY_HEADER, "XXXX"\)\.strip\(\)\.lower\(\) == "true":',
     "a missing flag read as XXXX is not 'true' either"),
    ("identity.jwks._key_algorithms", r'alg = _EC_ALGORITHMS\.get\(jwk\.get\("crv", ""\)\)',
     r'alg = _EC_ALGORITHMS\.get\(jwk\.get\("crv", ?(None|"XXXX")?\)\)',
     "a missing curve read as None or XXXX names no supported curve either: the same refusal"),
    ("identity.jwks._parse_key", r"key = PyJWK\(jwk, algorithm=next\(iter\(sorted\(algorithms\)\)\)\)\.key",
     r"key = PyJWK\(jwk, (algorithm=None)?\)\.key",
     "the algorithm only picks which of PyJWT's classes loads the key; without one PyJWK takes the key's own alg "
     "(already held to fit the key) or its kty/crv default: the same public key. Which algorithms a token may "
     "use is `algorithms`, not PyJWK's choice"),
    ("identity.jwks.parse_jwks", r".*def parse_jwks\(raw: bytes \| str, strict: bool = True\).*",
     r".*def parse_jwks\(raw: bytes \| str, strict: bool = False\).*",
     "both callers say which they want (load_jwks_file strict=True, RemoteKeySource._download strict=False)"),
]

def _one_replaced(old: str, *new: str):
    """Whether the mutated line is the original with one occurrence of `old` written as one of `new`."""
    def matches(before: str, after: str) -> bool:
        starts = [i for i in range(len(before)) if before.startswith(old, i)]
        return any(before[:i] + n + before[i + len(old):] == after for i in starts for n in new)
    return matches


# (function glob, whether an original and a mutated line are such a pair, reason): for a mutation
# that is harmless wherever it is made.
EXPLAINED_PAIRS: list[tuple[str, Callable[[str, str], bool], str]] = [
    ("*", _one_replaced('encode("utf-8"', 'encode("UTF-8"'), _CODEC_CASE),
    ("*", _one_replaced('encode("ascii"', 'encode("ASCII"'), _CODEC_CASE),
    ("*", _one_replaced('decode("utf-8"', 'decode("UTF-8"'), _CODEC_CASE),
    ("*", _one_replaced('decode("ascii"', 'decode("ASCII"'), _CODEC_CASE),
    ("*", _one_replaced('.split(";", 1)[0]', '.split(";", )[0]', '.split(";", 2)[0]'),
     "the first part of a split is the same however many splits are made"),
]

# Mutants the selection's unit tests miss but other tests kill (through Envoy, say): run.py runs
# these tests against the mutant (in the test process and every process it starts) and counts the
# mutant killed only when they fail against it and pass without it.
_VERIFY = "tests/unit/test_audit_verify.py"
_SUMMARY = 'return {"allowed": self.allow, "status": self.status, "reasons": list(self.reasons)}'
_REPLAY_IMPACT = ("tests/unit/test_audit_chains.py::test_replay_of_a_candidate_reports_exactly_the_decisions_it_changes",)
KILLED_BY: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("audit.chain.signed_message",
     'unsigned = {k: v for k, v in checkpoint.items() if k not in ("signature", "hash")}', "unsigned = None"):
        (f"{_VERIFY}::test_a_forged_record_with_a_recomputed_chain_is_caught_by_the_signature",),
    **{("decision.Decision.summary", _SUMMARY, _SUMMARY.replace(f'"{key}"', f'"{spelling}"')): _REPLAY_IMPACT
       for key in ("allowed", "status", "reasons") for spelling in (f"XX{key}XX", key.upper())},
    ("audit.chain.record_hash", "return hashlib.sha256(body_of(record)).hexdigest()",
     "return hashlib.sha256(None).hexdigest()"):
        ("tests/unit/test_audit_retention.py::test_tampering_with_the_manifest_is_caught",),
    ("audit.chain.record_hash", "return hashlib.sha256(body_of(record)).hexdigest()",
     "return hashlib.sha256(body_of(None)).hexdigest()"):
        ("tests/unit/test_audit_retention.py::test_tampering_with_the_manifest_is_caught",),
}

# Every surviving or untested mutant of these functions is run against these tests as above. For
# functions written after mutmut collected its test map (it then knows no test that reaches them)
# and for code reached only through a worker process.
KILLED_BY_FUNCTION: dict[str, tuple[str, ...]] = {
    "response._add_headers": ("tests/unit/test_response.py",),
    "audit.chain.chain_of": ("tests/unit/test_audit_chains.py::test_segment_names_per_chain",),
}

# Single mutants the selection's unit tests kill when run against them but mutmut's map of which
# tests reach a function does not pick (the Checker tests of these files): run as KILLED_BY is.
_SIGNALS_CHECK = "tests/unit/test_signals.py::test_a_check_whose_answer_cannot_be_built_still_counts_as_a_use_of_its_network"
KILLED_BY |= {
    ("check.Checker.check", "enforced = decision", "enforced = None"): (_SIGNALS_CHECK,),
}

# Timed-out mutants looked at by hand: a timeout is never a kill, so each says what the hang is.
TIMEOUTS_CHECKED: dict[tuple[str, str, str], str] = {
    ("facts.payload._strings_have_lone_surrogate", "node = stack.pop()", "node = None"):
        "an endless loop (the stack never shrinks) on any body with a \\u escape: the check never answers, "
        "so the client and Envoy see no decision at all; a hang, not slowness",
}
