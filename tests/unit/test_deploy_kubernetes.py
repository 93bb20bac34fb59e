"""deploy/kubernetes as kustomize renders it (Debian's kubectl): every object valid against the
Kubernetes schemas offline (kubernetes-validate), the pod hardened, the ConfigMaps a set the
service loads, and the Istio files pointing at what the base deploys."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from llm_authz.cli import build_parser
from llm_authz.config import load_config
from tests.kubelet_volume import KubeletVolume

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "deploy" / "kubernetes"
# The oldest Kubernetes minor still maintained upstream when this was written, and the newest known.
VERSIONS = ["1.32.0", kubernetes_validate.latest_version()]


@cache
def rendered() -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed (Debian package kubectl; make install installs it)"
    out = subprocess.run([kubectl, "kustomize", str(BASE)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in rendered() if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} objects"
    return found[0]


def pod_spec() -> dict[str, Any]:
    return one("StatefulSet")["spec"]["template"]["spec"]


def container() -> dict[str, Any]:
    (c,) = pod_spec()["containers"]
    return c


@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_object_validates_strictly(version: str) -> None:
    kinds = sorted(o["kind"] for o in rendered())
    assert kinds == ["ConfigMap", "ConfigMap", "Namespace", "PodDisruptionBudget", "Service", "Service",
                     "ServiceAccount", "StatefulSet"]
    for obj in rendered():
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_rejects_what_a_cluster_would() -> None:
    broken = yaml.safe_load(yaml.safe_dump(one("StatefulSet")))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_one_audit_volume_per_replica_writable_by_the_service_user() -> None:
    sts = one("StatefulSet")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/var/lib/llm-authz/audit"
    assert "--audit-dir=/var/lib/llm-authz/audit" in container()["args"]
    security = pod_spec()["securityContext"]
    assert security["fsGroup"] == security["runAsUser"] == 10001 and security["runAsNonRoot"] is True


def test_retention_keeps_the_audit_log_below_its_volume_size() -> None:
    (claim,) = one("StatefulSet")["spec"]["volumeClaimTemplates"]
    size = claim["spec"]["resources"]["requests"]["storage"]
    assert size.endswith("Gi")
    args = build_parser().parse_args(container()["args"])
    config = load_config(None, {"audit_retention_bytes": args.audit_retention_bytes})
    assert config.audit_compress == "zstd"
    # Room left for the open segment of each chain and one being compressed (64 MiB each, plain).
    assert config.audit_retention_bytes is not None
    assert config.audit_retention_bytes + 4 * config.audit_segment_bytes <= int(size[:-2]) * 2**30 * 0.9


def test_the_container_is_locked_down() -> None:
    c = container()
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                                    "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod_spec()["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_spec()["automountServiceAccountToken"] is False
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == ports["health"], probe
    assert f"--health-listen=0.0.0.0:{ports['health']}" in c["args"]


def test_service_and_disruption_budget_select_the_pods() -> None:
    labels = one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    service = one("Service", "llm-authz")
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc["appProtocol"] == "grpc" and grpc["targetPort"] == "grpc"
    for selector in (service["spec"]["selector"], one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert one("PodDisruptionBudget")["spec"]["minAvailable"] < one("StatefulSet")["spec"]["replicas"]


def test_the_container_arguments_are_flags_serve_accepts() -> None:
    args = build_parser().parse_args(container()["args"])
    assert args.command == "serve"
    config = load_config(None, {"listen": args.listen, "policies": args.policies, "tenants": args.tenants,
                                "audit_dir": args.audit_dir, "health_listen": args.health_listen,
                                "log_format": args.log_format, "audit_signing_key": args.audit_signing_key})
    assert config.watch is True


def test_no_secret_value_is_rendered_and_the_secrets_referred_to_are_named() -> None:
    assert not [o for o in rendered() if o["kind"] == "Secret"]
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert volumes["audit-signing-key"]["secret"]["secretName"] == "llm-authz-audit-signing-key"
    sources = volumes["tenants"]["projected"]["sources"]
    assert sources[1]["secret"]["name"] == "llm-authz-tenant-keys"


def test_the_configmaps_mounted_as_the_kubelet_mounts_them_are_what_the_service_loads(tmp_path: Path) -> None:
    policies = one("ConfigMap", "llm-authz-policies")["data"]
    tenants = one("ConfigMap", "llm-authz-tenants")["data"]
    assert set(policies) == {p.name for p in (REPO / "policies" / "rego" / "llm").glob("*.rego")
                             if not p.name.endswith("_test.rego")}
    assert set(tenants) == {p.name for p in (REPO / "tenants").glob("*.yaml")}
    # The tenants volume: the ConfigMap's keys plus the Secret's items at their paths.
    (items,) = [s["secret"]["items"] for s in pod_spec()["volumes"][1]["projected"]["sources"] if "secret" in s]
    keys = {i["path"]: (REPO / "tenants" / "keys" / i["key"]).read_text() for i in items}
    KubeletVolume(tmp_path / "policies", policies)
    KubeletVolume(tmp_path / "tenants", {**tenants, **keys})
    out = subprocess.run([sys.executable, "-m", "llm_authz", "policy", "check", "--policies", str(tmp_path / "policies"),
                          "--tenants", str(tmp_path / "tenants")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"{len(tenants)} tenants" in out.stdout


def test_istio_provider_and_authorization_policy_match_the_deployed_service() -> None:
    mesh = yaml.safe_load((REPO / "deploy" / "istio" / "mesh-config.yaml").read_text())
    (provider,) = mesh["spec"]["meshConfig"]["extensionProviders"]
    policy = yaml.safe_load((REPO / "deploy" / "istio" / "authorization-policy.yaml").read_text())
    assert policy["spec"]["action"] == "CUSTOM" and policy["spec"]["provider"]["name"] == provider["name"]
    service = one("Service", "llm-authz")
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    ext = provider["envoyExtAuthzGrpc"]
    assert ext["service"] == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert ext["port"] == grpc["port"]
    assert ext["failOpen"] is False


def test_the_tls_component_adds_the_flags_and_mounts_the_secret_as_a_directory(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(BASE, tmp_path)], "components": [os.path.relpath(BASE / "tls", tmp_path)]}))
    out = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    objects = [o for o in yaml.safe_load_all(out.stdout) if o]
    for obj in objects:
        kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)
    sts = next(o for o in objects if o["kind"] == "StatefulSet")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(c["args"])
    assert (str(args.tls_cert), str(args.tls_key), str(args.tls_client_ca)) == (
        "/etc/llm-authz/tls/tls.crt", "/etc/llm-authz/tls/tls.key", "/etc/llm-authz/tls/ca.crt")
    mount = next(m for m in c["volumeMounts"] if m["name"] == "tls")
    assert "subPath" not in mount  # a subPath mount would never see the renewed certificate
    assert c["readinessProbe"]["grpc"]["port"] == 9192  # probes stay on the plaintext health port


def test_istio_mtls_options_name_the_deployed_pods_ports_and_host() -> None:
    peer, callers = [d for d in yaml.safe_load_all((REPO / "deploy" / "istio" / "peer-authentication.yaml").read_text())
                     if d]
    labels = one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert peer["kind"] == "PeerAuthentication" and peer["spec"]["mtls"]["mode"] == "STRICT"
    for doc in (peer, callers):
        assert doc["metadata"]["namespace"] == one("Service", "llm-authz")["metadata"]["namespace"]
        assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert set(peer["spec"]["portLevelMtls"]) == {str(ports["health"]), str(ports["metrics"])}  # plaintext only there
    rule = yaml.safe_load((REPO / "deploy" / "istio" / "destination-rule-tls.yaml").read_text())
    mesh = yaml.safe_load((REPO / "deploy" / "istio" / "mesh-config.yaml").read_text())
    provider = mesh["spec"]["meshConfig"]["extensionProviders"][0]["envoyExtAuthzGrpc"]
    assert rule["spec"]["host"] == provider["service"]
    assert rule["spec"]["trafficPolicy"]["portLevelSettings"][0]["port"]["number"] == provider["port"]
