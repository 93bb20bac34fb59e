"""Policies and tenants read from directories laid out as the kubelet mounts ConfigMaps and Secrets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from llm_authz.policy import load_source, read_modules
from llm_authz.tenants import load_tenants
from tests.kubelet_volume import KubeletVolume, files_of

REPO = Path(__file__).resolve().parents[2]


def _volumes(tmp_path: Path) -> tuple[KubeletVolume, KubeletVolume]:
    policies = KubeletVolume(tmp_path / "policies", files_of(REPO / "policies" / "rego"))
    tenants = KubeletVolume(tmp_path / "tenants", files_of(REPO / "tenants"))
    return policies, tenants


def test_each_module_and_tenant_is_read_once_and_the_revision_is_the_plain_directorys(tmp_path: Path) -> None:
    policies, tenants = _volumes(tmp_path)
    plain, _ = load_source(REPO / "policies" / "rego", REPO / "tenants", "data.llm.authz.decision")
    mounted, loaded = load_source(policies.root, tenants.root, "data.llm.authz.decision")
    assert sorted(mounted.modules) == sorted(plain.modules) and len(mounted.modules) == len(
        [p for p in (REPO / "policies" / "rego").rglob("*.rego") if not p.name.endswith("_test.rego")])
    assert mounted.revision == plain.revision
    assert sorted(loaded) == sorted(p.stem for p in (REPO / "tenants").glob("*.yaml"))


def test_tenant_key_files_in_a_subfolder_of_the_volume_are_found(tmp_path: Path) -> None:
    _, tenants = _volumes(tmp_path)
    loaded, errors = load_tenants(tenants.root)
    assert errors == []
    jwks = loaded["acme"].resolve(loaded["acme"].tenant.credentials.jwt[0].jwks_file)
    assert jwks.is_file() and ".." in jwks.parent.parent.name  # read inside the current revision


def test_a_swap_is_read_whole_and_the_old_revision_is_gone(tmp_path: Path) -> None:
    volume = KubeletVolume(tmp_path / "p", {"a.rego": "package a\nx := 1\n", "sub/b.rego": "package b\ny := 1\n"})
    assert sorted(read_modules(volume.root)) == ["a.rego", "sub/b.rego"]
    volume.update({"c.rego": "package c\nz := 1\n"})
    assert sorted(read_modules(volume.root)) == ["c.rego"]
    assert len([p for p in volume.root.iterdir() if p.name.startswith("..2")]) == 1


def test_policy_check_accepts_a_configmap_shaped_directory(tmp_path: Path) -> None:
    policies, tenants = _volumes(tmp_path)
    out = subprocess.run([sys.executable, "-m", "llm_authz", "policy", "check", "--policies", str(policies.root),
                          "--tenants", str(tenants.root)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    modules = len(list((REPO / "policies" / "rego").rglob("*.rego")))  # each once, tests included
    tenants_count = len(list((REPO / "tenants").glob("*.yaml")))
    assert out.stdout.startswith(f"ok: {modules} modules, {tenants_count} tenants")


def test_a_symlink_loop_is_read_once(tmp_path: Path) -> None:
    (tmp_path / "p" / "sub").mkdir(parents=True)
    (tmp_path / "p" / "sub" / "a.rego").write_text("package a\nx := 1\n")
    (tmp_path / "p" / "sub" / "loop").symlink_to("..")
    assert list(read_modules(tmp_path / "p")) == ["sub/a.rego"]
