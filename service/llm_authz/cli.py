"""The `llm-authz` command: serve, policy eval|test|check, audit verify|export|keygen, keys new, schema."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from llm_authz import __version__


def _print_json(value: Any) -> None:
    try:
        text = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:  # integers beyond 64 bits: printed exactly, as OPA does
        text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    sys.stdout.write(text + "\n")


def _setup_logging(level: str, fmt: str | None = None) -> None:
    from llm_authz.logs import configure

    configure(level, fmt)  # type: ignore[arg-type]


# ---- serve ----------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    from llm_authz.config import load_config
    from llm_authz.errors import LlmAuthzError
    from llm_authz.server import Server

    _setup_logging(args.log_level, args.log_format)
    overrides = {"listen": args.listen, "policies": args.policies, "tenants": args.tenants,
                 "audit_dir": args.audit_dir, "engine": args.engine, "opa_url": args.opa_url,
                 "metrics_listen": args.metrics_listen, "audit_durability": args.audit_durability,
                 "audit_signing_key": args.audit_signing_key, "workers": args.workers,
                 "quota_backend": args.quota_backend, "redis_url": args.redis_url,
                 "bundle": args.bundle, "bundle_public_key": args.bundle_public_key,
                 "bundle_poll_seconds": args.bundle_poll_seconds, "opa_push": args.opa_push,
                 "decision_log_url": args.decision_log_url,
                 "entrypoint": args.entrypoint}
    overrides |= {"redis_prefix": args.redis_prefix, "processes": args.processes}
    overrides |= {"signals_networks": args.signals_networks}
    overrides |= {"watch": args.watch, "tls_cert": args.tls_cert, "tls_key": args.tls_key,
                  "tls_client_ca": args.tls_client_ca, "health_listen": args.health_listen,
                  "log_format": args.log_format}
    overrides |= {"audit_compress": args.audit_compress, "audit_retention_days": args.audit_retention_days,
                  "audit_retention_bytes": args.audit_retention_bytes}
    if args.dry_run:
        overrides["dry_run"] = True
    if args.raw_credentials:
        overrides["raw_credentials"] = True
    try:
        config = load_config(args.config, overrides)
        if config.log_format != args.log_format:
            _setup_logging(args.log_level, config.log_format)
        if config.processes > 1:
            import functools

            from llm_authz.supervisor import Supervisor

            return Supervisor(config, functools.partial(_setup_logging, args.log_level, config.log_format)).serve_forever()
        server = Server(config)
    except (LlmAuthzError, OSError) as exc:
        logging.getLogger("llm_authz").error("cannot start: %s", exc)
        return 1
    server.serve_forever()
    return 0


# ---- policy ---------------------------------------------------------------------------------

def _load_paths(paths: list[Path], include_tests: bool) -> tuple[dict[str, str], dict[str, Any]]:
    from llm_authz.policy import deep_merge, read_data, read_modules

    modules: dict[str, str] = {}
    data: dict[str, Any] = {}
    for path in paths:
        if path.is_dir() or path.suffix == ".rego":
            for name, source in read_modules(path, include_tests=include_tests).items():
                modules[str(path / name) if path.is_dir() else str(path)] = source
        if path.is_dir() or path.suffix in (".json", ".yaml", ".yml"):
            deep_merge(data, read_data(path), "data")
    return modules, data


def cmd_policy_eval(args: argparse.Namespace) -> int:
    from llm_authz.engine.base import UNDEFINED
    from llm_authz.engine.embedded import EmbeddedEngine
    from llm_authz.errors import LlmAuthzError
    from llm_authz.policy import deep_merge, load_json_exact, tenant_data

    try:
        modules, data = _load_paths(args.data, include_tests=True)
        for location in args.bundle:
            bundle_modules, bundle_data = _load_bundle(location, args.bundle_public_key)
            modules.update(bundle_modules)
            from llm_authz.policy import deep_merge

            deep_merge(data, bundle_data, "data")
        if args.tenants is not None:
            deep_merge(data, {"tenants": tenant_data(args.tenants)}, "data")
        input_doc = None
        if args.input:
            raw = sys.stdin.buffer.read() if str(args.input) == "-" else args.input.read_bytes()
            input_doc = load_json_exact(raw)
        engine = EmbeddedEngine(modules, data)
        try:
            value = engine.evaluate(args.query, input_doc)
        finally:
            engine.close()
    except (LlmAuthzError, OSError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    _print_json({"undefined": True} if value is UNDEFINED else {"result": value})
    return 0


def _load_bundle(location: Path, public_key: Path | None) -> tuple[dict[str, str], dict[str, Any]]:
    """A bundle's modules (named bundle:path) and data, verified when a key is given."""
    from llm_authz.bundle.format import read_bundle
    from llm_authz.bundle.signing import load_public_key

    key = load_public_key(public_key) if public_key else None
    bundle = read_bundle(location, key, skip_verify=key is None)
    return {f"{location}:{name}": src for name, src in bundle.modules.items()}, bundle.data


def cmd_policy_build(args: argparse.Namespace) -> int:
    from llm_authz.bundle.build import build
    from llm_authz.errors import LlmAuthzError

    try:
        manifest = build(args.paths, args.output, revision=args.revision, signing_key=args.signing_key,
                         tenants_dir=args.tenants)
    except (LlmAuthzError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    print(f"wrote {args.output}: revision {manifest['revision']}, roots {manifest['roots']}"
          f"{', signed' if args.signing_key else ''}")
    return 0


def cmd_policy_test(args: argparse.Namespace) -> int:
    from llm_authz.errors import LlmAuthzError
    from llm_authz.regotest import run_tests

    try:
        modules, data = _load_paths(args.paths or [Path("policies/rego")], include_tests=True)
        results = run_tests(modules, data, args.run)
    except (LlmAuthzError, OSError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    failed = [r for r in results if r.outcome != "pass"]
    for r in results:
        if args.verbose or r.outcome != "pass":
            line = f"{r.outcome.upper():5} {r.name} ({r.duration_us} µs)"
            print(line + (f"\n      {r.message}" if r.message else ""))
    if not results:
        print("no tests found")
        return 2
    print(f"{'PASS' if not failed else 'FAIL'}: {len(results) - len(failed)}/{len(results)}")
    return 2 if failed else 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    from llm_authz.engine.embedded import EmbeddedEngine
    from llm_authz.errors import LlmAuthzError
    from llm_authz.policy import PolicySource, read_data, read_modules
    from llm_authz.tenants import load_tenants

    problems: list[str] = []
    tenants, errors = load_tenants(args.tenants)
    problems.extend(str(e) for e in errors)
    try:
        modules = read_modules(args.policies, include_tests=True)
        data = read_data(args.policies)
        data["tenants"] = {tid: tf.tenant.policy_data() for tid, tf in tenants.items()}
        engine = EmbeddedEngine(modules, data)
        try:
            engine.compile_check(args.entrypoint)
        finally:
            engine.close()
        serving = {k: v for k, v in modules.items() if not k.endswith("_test.rego")}
        revision = PolicySource(serving, data, args.entrypoint).revision
    except (LlmAuthzError, OSError) as exc:
        problems.append(str(exc))
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        return 1
    print(f"ok: {len(modules)} modules, {len(tenants)} tenants, revision {revision}")
    return 0


# ---- audit ----------------------------------------------------------------------------------

def cmd_audit_verify(args: argparse.Namespace) -> int:
    from llm_authz.audit.keys import load_public_key
    from llm_authz.audit.verify import verify
    from llm_authz.errors import AuditKeyError

    try:
        keys = [load_public_key(p) for p in args.public_key or []]
    except AuditKeyError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    report = verify(args.paths, public_keys=keys, workers=args.jobs)
    if args.json:
        _print_json(report.as_dict())
        return 0 if report.ok else 1
    if report.problem is not None:
        print(f"FAIL: {report.problem}")
        if report.records:
            print(f"      ({report.records} record(s) read before it)")
        return 1
    signed = (f"{report.signed_checkpoints} signed by key {', '.join(report.key_ids)}"
              f"{'' if report.key_pinned else ' (key read from the log: pass --public-key to pin it)'}"
              if report.signed_checkpoints else "none signed")
    if len(report.chains) > 1:
        span = f"{len(report.chains)} chains (" + ", ".join(
            f"{c['name']} seq {c['first_seq']}..{c['last_seq']}" for c in report.chains) + ")"
    else:
        span = f"seq {report.first_seq}..{report.last_seq}"
    print(f"ok: {report.records} records in {len(report.files)} file(s), {span}: "
          f"{report.decisions} decisions, {report.checkpoints} checkpoints ({signed}), "
          f"{len(report.revisions)} policy revision(s), {report.recoveries} recovery record(s)")
    for line in _pruned_summary(report.pruned, report.chains):
        print(line)
    for warning in report.warnings:
        print(f"warning: {warning}")
    return 0


def _pruned_summary(pruned: list[dict[str, Any]], chains: list[dict[str, Any]]) -> list[str]:
    """What retention removed, chain by chain, and what the kept part is anchored on."""
    out = []
    for name in dict.fromkeys(p["chain"] for p in pruned):
        mine = [p for p in pruned if p["chain"] == name]
        reasons = ", ".join(f"{n} by {r}" for r, n in sorted(
            {r: sum(1 for p in mine if p["reason"] == r) for r in {p["reason"] for p in mine}}.items()))
        kept = next((c for c in chains if c["name"] == name), None)
        out.append(f"pruned: chain {name}: {len(mine)} segment(s) removed by retention ({reasons}), seq 1.."
                   f"{mine[-1]['last_seq']}, from {mine[0]['segment']} to {mine[-1]['segment']}, the last on "
                   f"{mine[-1]['pruned_at']}; the kept records (seq {mine[-1]['last_seq'] + 1}.."
                   f"{kept['last_seq'] if kept else '?'}) are intact and anchored on the signed checkpoint that "
                   f"closed {mine[-1]['segment']} (pruned.jsonl)")
    return out


def _archive_paths(command: Any) -> Any:
    """Let a command that reads a log take s3:// archives too: they are downloaded to a temporary
    directory first (audit/archive.py) and read like a directory."""
    import functools

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        if not any(str(p).startswith("s3://") for p in args.paths):
            args.paths = [Path(p) for p in args.paths]
            return command(args)
        from llm_authz.audit.archive import ArchiveError, local_copy

        try:
            with local_copy(args.paths) as local:
                args.paths = [Path(p) for p in local]
                return command(args)
        except ArchiveError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2
    return run


def cmd_audit_archive(args: argparse.Namespace) -> int:
    from llm_authz.audit.archive import ArchiveError, archive

    try:
        result = archive(args.audit_dir, args.to)
    except ArchiveError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    print(f"archived to {args.to}: {len(result.copied)} file(s) copied ({result.bytes} bytes), "
          f"{result.skipped} already there; SHA256SUMS lists every archived file")
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    from llm_authz.audit.export import opa_events
    from llm_authz.errors import AuditFormatError

    out = sys.stdout.buffer if args.output is None or str(args.output) == "-" else args.output.open("wb")
    try:
        for event in opa_events(args.paths):
            out.write(orjson.dumps(event) + b"\n")
    except AuditFormatError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    finally:
        out.flush()
        if out is not sys.stdout.buffer:
            out.close()
    return 0


def cmd_audit_keygen(args: argparse.Namespace) -> int:
    from llm_authz.audit.keys import generate
    from llm_authz.errors import AuditKeyError

    public = args.public or args.private.with_name(args.private.name.removesuffix(".pem") + ".pub.pem")
    try:
        kid = generate(args.private, public)
    except AuditKeyError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    print(f"key id {kid}\nprivate key (for serve --audit-signing-key, keep secret): {args.private}\n"
          f"public key (for audit verify --public-key, give to auditors): {public}")
    return 0


# ---- keys, schema ---------------------------------------------------------------------------

def cmd_replay(args: argparse.Namespace) -> int:
    import time

    from llm_authz.audit.keys import load_public_key
    from llm_authz.audit.verify import verify
    from llm_authz.errors import LlmAuthzError
    from llm_authz.replay import emit, reports, runner

    try:
        filters = runner.Filters(since=_time_arg(args.since, "--since"), until=_time_arg(args.until, "--until"),
                                 tenant=args.tenant, model=args.model)
        candidate = runner.Candidate.load(args.policies, args.tenants)
        keys = [load_public_key(p) for p in args.public_key or []]
    except (LlmAuthzError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    report = reports.Report(mode="impact" if candidate else "verify",
                            candidate={"policies": str(args.policies) if args.policies else None,
                                       "tenants": str(args.tenants) if args.tenants else None})
    if not args.no_verify:
        checked = verify(args.paths, public_keys=keys, workers=args.jobs or runner.default_jobs())
        if not checked.ok:
            sys.stderr.write(f"refused: the audit log does not verify: {checked.problem}\n"
                             "(--no-verify replays it anyway)\n")
            return 1
        report.verified = True
    cases: list[dict] = []

    def on_outcome(outcome: runner.Outcome) -> None:
        report.add(outcome)
        if outcome.test_case is not None and len(cases) < args.emit_limit:
            cases.append({**outcome.test_case, "decision_id": outcome.decision_id, "seq": outcome.seq,
                          "tenant": outcome.tenant, "model": outcome.model})

    show_progress = args.format == "text" and sys.stderr.isatty()
    started = time.monotonic()

    def progress(done: int) -> None:
        if show_progress:
            rate = done / max(time.monotonic() - started, 1e-6)
            sys.stderr.write(f"\r  replayed {done:,} records ({rate:,.0f}/s)")
            sys.stderr.flush()

    try:
        stats = runner.run([str(p) for p in args.paths], candidate, filters, args.jobs or runner.default_jobs(),
                           emit=args.emit_tests is not None, on_outcome=on_outcome, progress=progress)
    except (LlmAuthzError, OSError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if show_progress:
        sys.stderr.write("\n")
    report.elapsed_seconds = time.monotonic() - started
    report.skipped = stats.skipped
    report.revisions = stats.revisions
    if args.emit_tests is not None:
        written = emit.write_tests(args.emit_tests, cases)
        sys.stderr.write(f"wrote {written} regression test(s) to {args.emit_tests}\n")
    if args.format == "json":
        text = orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n"
    elif args.format == "html":
        text = reports.render_html(report)
    else:
        text = reports.render_text(report)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if report.mode == "verify" and (report.mismatches or (args.strict and report.unreproducible)):
        return 1
    return 0


def _time_arg(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    from llm_authz.replay.runner import parse_time

    parsed = parse_time(value)
    if parsed is None:
        raise ValueError(f"{flag} needs an RFC 3339 time with a zone, e.g. 2026-11-21T00:00:00Z")
    return parsed


def cmd_keys_new(args: argparse.Namespace) -> int:
    """Print a new key once, and apart from it the tenant-file entry (which holds only its SHA-256)."""
    import secrets

    from llm_authz.identity.api_keys import new_key

    key, digest = new_key()
    entry: dict[str, Any] = {"id": args.id or f"ak_{args.tenant}_{secrets.token_hex(3)}", "sha256": digest,
                             "scopes": args.scopes or ["inference:invoke"]}
    if args.expires:
        entry["expires"] = args.expires
    if args.json:
        _print_json({"tenant": args.tenant, "key": key, "entry": entry})
        return 0
    # One line in YAML flow style, values as JSON (valid YAML whatever the scope names hold).
    fields = [f"{name}: {orjson.dumps(value).decode().replace(',', ', ')}" for name, value in entry.items()]
    print("API key (shown only now: store it in a secret manager, it cannot be recovered):")
    print(f"  {key}")
    print()
    print(f"Add this entry under credentials.api_keys in tenants/{args.tenant}.yaml, then reload (SIGHUP):")
    print(f"    - {{{', '.join(fields)}}}")
    return 0


def cmd_schema(_args: argparse.Namespace) -> int:
    from llm_authz.input import json_schema

    _print_json(json_schema())
    return 0


def _expiry(value: str) -> str:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError("use an RFC 3339 time, e.g. 2027-01-01T00:00:00Z") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError("the expiry needs a time zone, e.g. ...Z")
    if parsed <= datetime.now(timezone.utc):
        raise argparse.ArgumentTypeError("the expiry is in the past")
    return value


def _name(what: str, pattern: str) -> Any:
    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise argparse.ArgumentTypeError(f"{value!r} is not a valid {what}")
        return value
    return check


# ---- parser ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-authz", description="Policy decision service for LLM APIs (Envoy ext_authz).")
    parser.add_argument("--version", action="version", version=f"llm-authz {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the ext_authz gRPC server",
                           description="Run the Envoy ext_authz gRPC server. Flags override the config file.")
    serve.add_argument("--config", type=Path, help="YAML config file")
    serve.add_argument("--listen", help="HOST:PORT for gRPC (default 127.0.0.1:9191)")
    serve.add_argument("--policies", type=Path, help="policy directory (default ./policies/rego)")
    serve.add_argument("--tenants", type=Path, help="tenant directory (default ./tenants)")
    serve.add_argument("--audit-dir", type=Path, help="audit log directory (default ./audit)")
    serve.add_argument("--engine", choices=["embedded", "opa"])
    serve.add_argument("--opa-url", help="OPA server URL for --engine opa")
    serve.add_argument("--opa-push", action="store_true", default=None,
                       help="--engine opa: push policies and data to the OPA server (a private one); "
                            "by default it is only queried")
    serve.add_argument("--metrics-listen", help="HOST:PORT for Prometheus /metrics (default 127.0.0.1:9464)")
    serve.add_argument("--audit-durability", choices=["fsync", "buffered"])
    serve.add_argument("--audit-compress", choices=["zstd", "gzip", "none"],
                       help="how closed audit segments are compressed (default zstd)")
    serve.add_argument("--audit-retention-days", type=float, metavar="DAYS",
                       help="prune closed audit segments older than this")
    serve.add_argument("--audit-retention-bytes", type=int, metavar="BYTES",
                       help="prune the oldest closed audit segments while the log is larger than this")
    serve.add_argument("--audit-signing-key", type=Path, help="Ed25519 private key (PEM) for checkpoints")
    serve.add_argument("--workers", type=int, help="gRPC worker threads")
    serve.add_argument("--processes", type=int,
                       help="worker processes answering on the one port, each with its own audit chain (default 1)")
    serve.add_argument("--quota-backend", choices=["none", "local", "redis"],
                       help="per-tenant quotas counted in this process (local, default) or in Redis")
    serve.add_argument("--redis-url", help="redis://host:port/db for --quota-backend redis")
    serve.add_argument("--signals-networks", type=Path,
                       help="YAML list of your own networks ({cidr, name, country, asn}) for input.signals")
    serve.add_argument("--redis-prefix", help="prefix of every Redis key this service writes (default llm-authz)")
    serve.add_argument("--dry-run", action="store_true", help="answer allow, log the real decision")
    serve.add_argument("--bundle", metavar="PATH|URL",
                       help="policies and data from an OPA bundle (.tar.gz, directory, or http(s) URL polled)")
    serve.add_argument("--bundle-public-key", type=Path, metavar="PEM",
                       help="verify the bundle's .signatures.json with this RSA/ECDSA public key")
    serve.add_argument("--decision-log-url", metavar="URL",
                       help="ship every decision to this collector as OPA decision-log events (gzip JSON POST), "
                            "from the audit log, at least once")
    serve.add_argument("--bundle-poll-seconds", type=float, metavar="N",
                       help="poll a bundle URL every N seconds, with jitter (default 30)")
    serve.add_argument("--entrypoint", metavar="QUERY",
                       help="the decision to evaluate (default data.llm.authz.decision; an OPA-Envoy policy: "
                            "e.g. data.envoy.authz.allow)")
    serve.add_argument("--raw-credentials", action="store_true",
                       help="hand the policy credential headers as the client sent them (OPA-Envoy's behaviour) "
                            "instead of 'Bearer [redacted]'; the audit log still redacts them")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--log-format", choices=["json", "text"],
                       help="log lines as JSON objects or text (default json unless stderr is a terminal)")
    serve.add_argument("--watch", action=argparse.BooleanOptionalAction, default=None,
                       help="reload when the policy or tenant files change (default on; SIGHUP always works)")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain for TLS on the gRPC port")
    serve.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    serve.add_argument("--tls-client-ca", type=Path,
                       help="PEM CA bundle: clients must present a certificate it signed (mTLS)")
    serve.add_argument("--health-listen", help="HOST:PORT for a plaintext gRPC health-only port (probes)")
    serve.set_defaults(func=cmd_serve)

    policy = sub.add_parser("policy", help="evaluate, test and check policies")
    psub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    ev = psub.add_parser("eval", help="evaluate a query, like `opa eval`",
                         description="Evaluate QUERY. Prints {\"result\": ...} or {\"undefined\": true}; exit 2 on error.")
    ev.add_argument("-d", "--data", type=Path, action="append", default=[], help=".rego, .json/.yaml or a directory")
    ev.add_argument("-b", "--bundle", type=Path, action="append", default=[],
                    help="an OPA bundle (.tar.gz or directory); verified when --bundle-public-key is given")
    ev.add_argument("--bundle-public-key", type=Path, metavar="PEM", help="public key to verify bundles with")
    ev.add_argument("-i", "--input", type=Path, help="input JSON file ('-' for stdin)")
    ev.add_argument("--tenants", type=Path, metavar="DIR",
                    help="tenant directory: its files become data.tenants exactly as `serve` builds it")
    ev.add_argument("query", help="e.g. data.llm.authz.decision")
    ev.set_defaults(func=cmd_policy_eval)
    bu = psub.add_parser("build", help="write an OPA bundle (.tar.gz), like `opa build`",
                         description="Write the policies and data under PATH as an OPA bundle that OPA itself and "
                                     "`serve --bundle` load. --tenants puts the tenant files in it (data.tenants).")
    bu.add_argument("paths", type=Path, nargs="+", metavar="PATH", help=".rego, .json/.yaml or a directory")
    bu.add_argument("-o", "--output", type=Path, required=True, metavar="BUNDLE.tar.gz")
    bu.add_argument("--signing-key", type=Path, metavar="PEM", help="sign with this RSA/ECDSA private key")
    bu.add_argument("--revision", help="the manifest's revision (default: a digest of the contents)")
    bu.add_argument("--tenants", type=Path, metavar="DIR", help="tenant files to put under data.tenants")
    bu.set_defaults(func=cmd_policy_build)
    te = psub.add_parser("test", help="run Rego test_ rules, like `opa test`")
    te.add_argument("paths", type=Path, nargs="*", help="files or directories (default ./policies/rego)")
    te.add_argument("-v", "--verbose", action="store_true", help="list every test")
    te.add_argument("--run", help="only tests whose name matches this regex")
    te.set_defaults(func=cmd_policy_test)
    ch = psub.add_parser("check", help="compile policies and validate tenant files")
    ch.add_argument("--policies", type=Path, default=Path("policies/rego"))
    ch.add_argument("--tenants", type=Path, default=Path("tenants"))
    ch.add_argument("--entrypoint", default="data.llm.authz.decision")
    ch.set_defaults(func=cmd_policy_check)

    audit = sub.add_parser("audit", help="verify, export and sign the audit log")
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    av = asub.add_parser("verify", help="check an audit log's hashes, chain and checkpoint signatures",
                         description="Exit 0 when the log is intact; exit 1 naming the first bad file, line and "
                                     "seq and what is wrong; exit 2 when a key cannot be read.")
    av.add_argument("paths", nargs="+", metavar="PATH",
                    help="an audit directory, an archive (a directory or s3://bucket/prefix) or segment files")
    av.add_argument("--public-key", type=Path, action="append",
                    help="Ed25519 public key (PEM) every checkpoint must be signed with (repeat for rotated keys)")
    av.add_argument("--json", action="store_true", help="print the report as JSON")
    av.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 8),
                    help="processes checking segments in parallel (default: the number of CPUs, at most 8)")
    av.set_defaults(func=_archive_paths(cmd_audit_verify))
    ax = asub.add_parser("export", help="write decision records as OPA decision-log events (JSON lines)")
    ax.add_argument("paths", nargs="+", metavar="PATH",
                    help="an audit directory, an archive (a directory or s3://bucket/prefix) or segment files")
    ax.add_argument("--format", choices=["opa"], default="opa")
    ax.add_argument("-o", "--output", type=Path, help="output file (default stdout)")
    ax.set_defaults(func=_archive_paths(cmd_audit_export))
    aa = asub.add_parser("archive", help="copy closed segments, revisions and pruned.jsonl to a directory or S3",
                         description="Copies what the archive does not hold yet (closed segments of every chain, "
                                     "revisions, pruned.jsonl), then SHA256SUMS. S3 credentials and endpoint come "
                                     "from boto3's usual configuration (AWS_* variables, profiles).")
    aa.add_argument("audit_dir", type=Path, metavar="AUDIT_DIR")
    aa.add_argument("--to", required=True, metavar="DIR|s3://bucket/prefix")
    aa.set_defaults(func=cmd_audit_archive)
    ak = asub.add_parser("keygen", help="make an Ed25519 key pair for signed checkpoints")
    ak.add_argument("private", type=Path, metavar="PRIVATE.pem", help="where to write the private key (mode 0600)")
    ak.add_argument("--public", type=Path, help="where to write the public key (default PRIVATE.pub.pem)")
    ak.set_defaults(func=cmd_audit_keygen)

    rp = sub.add_parser(
        "replay", help="re-evaluate logged decisions (verify), or show a candidate policy's impact",
        description="Without --policies/--tenants: check every logged decision against the archived revision "
                    "that made it (exit 1 on a mismatch). With them: report every decision the candidate would "
                    "change (exit 0). The log is verified first; a log that does not verify is refused (exit 1).")
    rp.add_argument("paths", nargs="+", metavar="PATH",
                    help="audit directory, an archive (a directory or s3://bucket/prefix) or segment files")
    rp.add_argument("--policies", type=Path, help="candidate policy directory")
    rp.add_argument("--tenants", type=Path, help="candidate tenant directory")
    rp.add_argument("--since", help="only records at or after this RFC 3339 time")
    rp.add_argument("--until", help="only records before this RFC 3339 time")
    rp.add_argument("--tenant", help="only this tenant's records")
    rp.add_argument("--model", help="only this model's records")
    rp.add_argument("--format", choices=["text", "json", "html"], default="text")
    rp.add_argument("--output", type=Path, help="write the report here instead of stdout")
    rp.add_argument("--no-verify", action="store_true", help="replay a log that does not verify")
    rp.add_argument("--public-key", type=Path, action="append", help="pin the checkpoint signing key")
    rp.add_argument("--jobs", type=int, help="worker processes (default: all cores)")
    rp.add_argument("--strict", action="store_true", help="verify mode: unreproducible records fail too")
    rp.add_argument("--emit-tests", type=Path, metavar="DIR", help="write flips/mismatches as Rego tests here")
    rp.add_argument("--emit-limit", type=int, default=200, help="at most this many emitted tests (default 200)")
    rp.set_defaults(func=_archive_paths(cmd_replay))

    keys = sub.add_parser("keys", help="API key tools")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kn = ksub.add_parser("new", help="make a new API key and print its tenant-file entry")
    kn.add_argument("--tenant", required=True, type=_name("tenant id", r"[a-z0-9][a-z0-9_-]{0,62}"))
    kn.add_argument("--id", type=_name("key id", r"[A-Za-z0-9_.:-]{1,128}"),
                    help="key id (default ak_<tenant>_<random>)")
    kn.add_argument("--scopes", nargs="+", type=_name("scope", r"[A-Za-z0-9][A-Za-z0-9_.:/*-]{0,127}"),
                    help="scopes (default inference:invoke)")
    kn.add_argument("--expires", type=_expiry, help="RFC 3339 expiry, e.g. 2027-01-01T00:00:00Z")
    kn.add_argument("--json", action="store_true", help="print {tenant, key, entry} as JSON")
    kn.set_defaults(func=cmd_keys_new)

    schema = sub.add_parser("schema", help="print the JSON Schema of the OPA input document")
    schema.set_defaults(func=cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and args.command == "serve":
        from llm_authz.engine.goruntime import reexec_with_gogc

        reexec_with_gogc(sys.argv[1:])  # a process of its own only: never replaces a caller of main()
    return int(args.func(args))
