"""The container, compose, service and chart files in deploy/, checked offline.

No container runtime or Kubernetes runs on the test machines, so these are linted, not run
(docs/deployment.md says which is which): hadolint and dockerfile-parse on the Dockerfile,
the compose file against the compose-spec JSON schema (vendored), the systemd unit with
`systemd-analyze verify`, and the Helm chart rendered offline (tests/deploy_helm.py) and
validated against the Kubernetes schemas. What ties them to what is run:
tests/test_deploy_nginx.py installs with deploy/install.sh (the Dockerfile's build step)
and starts an instance with the Dockerfile's CMD and HEALTHCHECK; here, the Dockerfile, the
unit and the chart are held to those same commands, ports and paths.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from tests.deploy_helm import Chart, manifests

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
INSTALL_PREFIX = "/opt/studyhall"


def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(DEPLOY / "Dockerfile"))


def instructions(stage: int | None = None) -> list[dict[str, Any]]:
    """The Dockerfile's instructions, of one stage (0, 1, …) or all."""
    found, current = [], -1
    for ins in dockerfile().structure:
        if ins["instruction"] == "FROM":
            current += 1
        if stage is None or current == stage:
            found.append(ins)
    return found


def exec_form(ins: dict[str, Any]) -> list[str]:
    value = json.loads(ins["value"])
    assert isinstance(value, list), f"{ins['instruction']} is not in exec form: {ins['value']}"
    return value


def docker_cmd() -> list[str]:
    return exec_form([i for i in instructions() if i["instruction"] == "CMD"][-1])


def docker_healthcheck() -> list[str]:
    health = [i["value"] for i in instructions() if i["instruction"] == "HEALTHCHECK"][-1]
    return json.loads(health.split("CMD", 1)[1])


def docker_install() -> list[str]:
    """The build stage's RUN that installs Studyhall."""
    runs = [i for i in instructions(0) if i["instruction"] == "RUN"]
    assert len(runs) == 1, "the build stage installs with one step: deploy/install.sh"
    return exec_form(runs[0])


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run([str(BIN / "hadolint"), str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_is_multistage_slim_non_root_with_health_and_signals() -> None:
    froms = [i["value"] for i in instructions() if i["instruction"] == "FROM"]
    assert len(froms) == 2 and all("-slim" in f for f in froms), froms
    final = instructions(1)
    kinds = [i["instruction"] for i in final]
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users and not users[-1].startswith(("0", "root")), "the server runs as a non-root user"
    assert kinds.index("USER") < kinds.index("CMD")
    assert any(i["instruction"] == "COPY" and "--from=build" in i["value"] and INSTALL_PREFIX in i["value"] for i in final)
    # No compilers or the source tree in the image: only the installed environment is copied.
    assert not [i for i in final if i["instruction"] in ("ADD", "COPY") and "--from=build" not in i["value"]]
    # Signals: tini is PID 1 and execs the server (exec form, no shell in between).
    assert exec_form([i for i in final if i["instruction"] == "ENTRYPOINT"][-1]) == ["tini", "--"]
    assert docker_cmd() == ["studyhall", "serve"]
    health = [i["value"] for i in final if i["instruction"] == "HEALTHCHECK"][-1]
    assert "/api/health" in health and "CMD [" in health
    env = dockerfile().envs
    assert env["STUDYHALL_HOST"] == "0.0.0.0"
    assert [i["value"] for i in final if i["instruction"] == "EXPOSE"] == [env["STUDYHALL_PORT"]]
    assert env["PATH"].startswith(f"{INSTALL_PREFIX}/bin:")
    assert env["HF_HUB_OFFLINE"] == "1", "the model ships in the image: never fetched at run time"


def test_dockerfile_installs_with_the_tested_install_script() -> None:
    """The image is built by deploy/install.sh, which tests/test_deploy_nginx.py runs; the
    files it needs are the ones copied in and let through the .dockerignore."""
    assert docker_install() == ["sh", "deploy/install.sh", INSTALL_PREFIX, "/src"]
    copied = [i["value"].split()[0] for i in instructions(0) if i["instruction"] == "COPY"]
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for source in (c.rstrip("/") for c in copied):
        assert source in allowed, f"{source} is copied but excluded by Dockerfile.dockerignore"
    copied_text = " ".join(i["value"] for i in instructions(0) if i["instruction"] == "COPY")
    for package in ("server", "handlers", "storage", "rag", "static"):  # server/static links to static/
        assert f"{package}/" in copied_text, f"{package}/ is not copied into the build stage"
    include = re.search(r'include = \[(.*?)\]', (ROOT / "pyproject.toml").read_text())
    assert include is not None
    for package in re.findall(r'"(\w+)\*"', include[1]):
        assert f"{package}/" in copied_text, f"the package {package} is not copied into the build stage"


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())


def test_compose_file_matches_the_compose_spec_schema() -> None:
    schema = json.loads((DEPLOY / "vendor" / "compose-spec" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(_compose())
    broken = _compose()
    broken["services"]["nginx"]["ports"] = {"not": "a list"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(broken)


def test_compose_runs_two_instances_behind_nginx_with_its_trusted_address() -> None:
    compose = _compose()
    services = compose["services"]
    instances = [name for name, s in services.items() if s.get("build", {}).get("dockerfile") == "deploy/Dockerfile"]
    assert len(instances) == 2, instances
    nginx = services["nginx"]
    address = nginx["networks"]["studyhall"]["ipv4_address"]
    for name in instances:
        env = services[name]["environment"]
        assert env["STUDYHALL_TRUSTED_PROXIES"] == address
        assert env["DATABASE_URL"].startswith("postgresql://") and "@db:" in env["DATABASE_URL"]
        assert env["REDIS_URL"].startswith("redis://redis:")
    assert "pgvector" in services["db"]["image"]
    for volume in nginx["volumes"]:
        source = volume.split(":")[0]
        assert (DEPLOY / "compose" / source).resolve().is_file(), f"{source} does not exist"
    conf = (DEPLOY / "compose" / "nginx-compose.conf").read_text()
    for name in instances:
        assert f"server {name}:8080" in conf
    # The same sticky hash, upgrade map and cache as the tested configuration.
    shipped = (DEPLOY / "nginx" / "studyhall.conf").read_text()
    for pattern in (r"hash \$remote_addr consistent;", r"map \$http_upgrade \$studyhall_connection \{[^}]*\}",
                    r"proxy_cache_path[^;]*;"):
        ours, theirs = re.search(pattern, conf), re.search(pattern, shipped)
        assert ours and theirs and " ".join(ours[0].split()) == " ".join(theirs[0].split()), pattern


def test_systemd_unit_runs_the_installed_server_and_verifies() -> None:
    unit = (DEPLOY / "systemd" / "studyhall@.service").read_text()
    exec_start = re.search(r"^ExecStart=(.*)$", unit, flags=re.MULTILINE)
    assert exec_start is not None
    command = exec_start[1].split()
    assert command[0] == f"{INSTALL_PREFIX}/bin/{docker_cmd()[0]}" and command[1:] == docker_cmd()[1:], \
        "the unit starts the server as the image does, from what deploy/install.sh installs"
    assert "KillSignal=SIGTERM" in unit and "Restart=on-failure" in unit
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, flags=re.MULTILINE)[1])  # type: ignore[index]
    assert stop > 5, "systemd must give the drain (STUDYHALL_SHUTDOWN_SECONDS, 5) time before SIGKILL"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # the checks above still ran; docs/deployment.md notes systemd-analyze is optional
    with_local_paths = unit.replace(f"{INSTALL_PREFIX}/bin/studyhall", str(BIN / "studyhall"))
    with_local_paths = with_local_paths.replace("EnvironmentFile=/", "EnvironmentFile=-/")
    tmp = Path(subprocess.check_output(["mktemp", "-d"], text=True).strip())
    try:
        path = tmp / "studyhall@8080.service"
        path.write_text(with_local_paths)
        done = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    complaints = [line for line in done.stderr.splitlines() if "studyhall@" in line]
    assert done.returncode == 0 and not complaints, done.stderr


CHART = DEPLOY / "helm" / "studyhall"
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def _by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("overrides", [
    {},
    {"autoscaling": {"enabled": False}, "ingress": {"enabled": False}, "existingSecret": "studyhall-prod"},
], ids=["defaults", "no-hpa-no-ingress-existing-secret"])
def test_helm_chart_renders_to_valid_kubernetes_manifests(overrides: dict[str, Any]) -> None:
    docs = manifests(Chart(CHART).render(overrides))
    for doc in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    kinds = _by_kind(docs)
    deployment = kinds["Deployment"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/health"
    assert container["startupProbe"]["httpGet"]["path"] == "/api/health"
    assert container["ports"][0]["containerPort"] == 8080
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["terminationGracePeriodSeconds"] > 5 + int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert kinds["Service"]["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    secret_ref = container["envFrom"][1]["secretRef"]["name"]
    if overrides:
        assert "HorizontalPodAutoscaler" not in kinds and "Ingress" not in kinds and "Secret" not in kinds
        assert deployment["spec"]["replicas"] == 2
        assert secret_ref == "studyhall-prod"
    else:
        assert "replicas" not in deployment["spec"], "with the HPA on, the Deployment must not fight it"
        assert kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert kinds["Secret"]["metadata"]["name"] == secret_ref
        annotations = kinds["Ingress"]["metadata"]["annotations"]
        assert annotations["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$remote_addr"
        assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 40


def test_helm_renderer_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    """The offline renderer fails on Go template syntax outside its subset, rather than
    render it wrongly (a chart that outgrows it must say so)."""
    from tests.deploy_helm import Unsupported

    shutil.copytree(CHART, tmp_path / "chart")
    (tmp_path / "chart" / "templates" / "extra.yaml").write_text("{{ range .Values.config }}x{{ end }}\n")
    with pytest.raises(Unsupported):
        Chart(tmp_path / "chart").render()
