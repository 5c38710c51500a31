"""The security scan of the Kubernetes manifests (issue: "a security scan passes or each waived
finding is explained"): checkov over every rendered overlay finds nothing but the findings the
renderer waives on purpose, each with its reason (services/launcher/kubernetes.py
CHECKOV_WAIVERS); and the same scan does flag a pod that breaks the rules, so a pass means
something. checkov runs from its own environment (.venv-scan, `make test-deps`)."""

from __future__ import annotations

import json
import subprocess

import pytest

from services.common.processes import REPO_ROOT
from services.launcher.kubernetes import CHECKOV_WAIVERS, PROMETHEUS_WAIVERS
from tests.deploy.test_kubernetes import OVERLAYS, kubectl

CHECKOV = REPO_ROOT / ".venv-scan" / "bin" / "checkov"

# A pod that breaks the rules the fleet's pods keep: privileged, root, a writable root filesystem.
BAD_POD = """apiVersion: v1
kind: Pod
metadata: {name: bad, namespace: scan-check}
spec:
  containers:
  - name: bad
    image: busybox:1.36
    securityContext: {privileged: true, runAsUser: 0, readOnlyRootFilesystem: false}
"""


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> dict:
    if not CHECKOV.exists():
        pytest.skip("checkov is missing: make test-deps (it installs .venv-scan)")
    folder = tmp_path_factory.mktemp("scan")
    files = []
    for overlay in OVERLAYS:
        rendered = subprocess.run([kubectl(), "kustomize", str(REPO_ROOT / "kubernetes" / "overlays" / overlay)],
                                  capture_output=True, text=True, timeout=120, check=True).stdout
        (folder / f"{overlay}.yaml").write_text(rendered)
        files += ["-f", str(folder / f"{overlay}.yaml")]
    (folder / "bad.yaml").write_text(BAD_POD)
    result = subprocess.run([str(CHECKOV), *files, "-f", str(folder / "bad.yaml"), "--framework", "kubernetes",
                             "--output", "json", "--skip-download"],
                            capture_output=True, text=True, timeout=600, cwd=folder)
    assert result.stdout, f"checkov printed nothing (exit {result.returncode}): {result.stderr[-2000:]}"
    return json.loads(result.stdout)


def test_the_manifests_pass_checkov_but_for_the_explained_waivers(scan):
    results = scan["results"]
    failed = [(f["check_id"], f["resource"]) for f in results["failed_checks"] if "scan-check" not in f["resource"]]
    assert failed == [], f"checkov findings in the manifests: {failed}"
    assert scan["summary"]["parsing_errors"] == 0
    assert len([c for c in results["passed_checks"] if "scan-check" not in c["resource"]]) > 1000
    waived = {c["check_id"] for c in results["skipped_checks"]}
    assert waived <= set(CHECKOV_WAIVERS) | set(PROMETHEUS_WAIVERS), "a skip without a reason in the renderer"
    prometheus_only = {c["resource"] for c in results["skipped_checks"] if c["check_id"] in PROMETHEUS_WAIVERS}
    assert prometheus_only == {"Deployment.mufleet.prometheus"}
    assert all(len(why) > 40 for why in (*CHECKOV_WAIVERS.values(), *PROMETHEUS_WAIVERS.values()))


def test_the_scan_flags_a_pod_that_breaks_the_rules(scan):
    flagged = {f["check_id"] for f in scan["results"]["failed_checks"] if "scan-check" in f["resource"]}
    # privileged, root (runAsNonRoot absent), writable root filesystem
    assert {"CKV_K8S_16", "CKV_K8S_23", "CKV_K8S_22"} <= flagged, flagged
