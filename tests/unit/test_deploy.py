"""What can be checked of the deployment files without Docker or a cluster.

Compose: the YAML parses, every bind-mounted host path exists, every CPO_* variable is a setting,
ports and Prometheus job names match the settings. Dockerfile: multi-stage, pinned, non-root,
its COPY sources exist, and its install step works in a plain venv from only those sources.
Kubernetes: every object validates against the Kubernetes JSON schemas (kubernetes-validate,
strict), the Prometheus Operator objects against the CRDs' structure, the wiring holds,
and the PrometheusRule equals the generated Prometheus rules. Rules: every runbook_url
resolves to a heading of docs/runbooks.md.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from streams import k8s
from streams.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
K8S_DIR = ROOT / "deploy" / "kubernetes"
RULES_DIR = ROOT / "deploy" / "prometheus"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
SETTING_ENVS = {setting.env for setting in SETTINGS.values()}
METRICS_PORT = int(SETTINGS["metrics_port"].default)
EXPORTER_PORT = int(SETTINGS["exporter_port"].default)
# The oldest Kubernetes the manifests claim (docs/deployment.md) and the newest the package ships.
K8S_VERSIONS = ["1.27", "latest"]


def load_yaml(path: Path) -> object:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def cpo_env_names(node: object) -> set[str]:
    """Every CPO_* name used as an env key, k8s `env[].name` or ConfigMap data key, anywhere."""
    names: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and key.startswith("CPO_"):
                names.add(key)
            if key == "name" and isinstance(value, str) and value.startswith("CPO_"):
                names.add(value)
            names |= cpo_env_names(value)
    elif isinstance(node, list):
        for item in node:
            names |= cpo_env_names(item)
    return names


def assert_all_settings(names: set[str], where: str) -> None:
    unknown = {name for name in names
               if name not in SETTING_ENVS and name.removesuffix("_FILE") not in SETTING_ENVS}
    assert not unknown, f"{where} uses {sorted(unknown)}: not in streams/settings.SETTINGS"


# --- Compose -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE_DIR / "compose.yaml")


@pytest.fixture(scope="module")
def compose_prometheus() -> dict:
    return load_yaml(COMPOSE_DIR / "prometheus.yml")


def bind_mounts(service: dict) -> list[tuple[Path, str]]:
    """(host path, container path) of a service's bind mounts, short and long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                mounts.append((COMPOSE_DIR / source, target))
        elif volume.get("type") == "bind":
            mounts.append((COMPOSE_DIR / volume["source"], volume["target"]))
    return mounts


def host_path(compose: dict, service: str, container_path: str) -> Path:
    """The repository path a container path of `service` comes from, through its bind mounts."""
    for source, target in bind_mounts(compose["services"][service]):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target):].lstrip("/")
    raise AssertionError(f"{service}: nothing is mounted at {container_path}")


def test_compose_has_the_whole_stack_with_pinned_images(compose):
    services = compose["services"]
    for name in ["kafka", "redis", "topics", "worker-1", "worker-2", "exporter", "simulator",
                 "prometheus", "alertmanager", "grafana"]:
        assert name in services, f"compose.yaml lacks the {name} service"
    for name, service in services.items():
        image = service["image"]
        tag = image.rpartition(":")[2]
        assert ":" in image and tag != "latest" and re.search(r"\d", tag), f"{name}: pin {image}"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert services["redis"]["image"].startswith("redis:7")
    assert "--appendonly yes" in " ".join(services["redis"]["command"])
    assert services["topics"]["command"] == ["topics", "create"]
    workers = [s for s in services.values() if s.get("command") == ["worker"]]
    assert len(workers) == 2
    assert len({w["container_name"] for w in workers}) == 2, "workers need distinct names"


def test_compose_mounts_and_build_files_exist(compose):
    for name, service in compose["services"].items():
        for source, _ in bind_mounts(service):
            assert source.exists(), f"{name} mounts {source.relative_to(ROOT)}, which is missing"
        if "build" in service:
            context = COMPOSE_DIR / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).is_file()
    for secret in compose.get("secrets", {}).values():
        assert (COMPOSE_DIR / secret["file"]).is_file()


def test_compose_mounted_config_is_not_empty(compose, compose_prometheus):
    """The rule, dashboard and Alertmanager files the containers read are really there."""
    rule_files = []
    for pattern in compose_prometheus["rule_files"]:
        folder = host_path(compose, "prometheus", pattern).parent.resolve()
        rule_files += folder.glob(Path(pattern).name)
    missing = set(k8s.rule_files(RULES_DIR)) - set(rule_files)
    assert not missing, f"Prometheus in compose does not load {sorted(map(str, missing))}"
    provisioning = host_path(compose, "grafana", "/etc/grafana/provisioning/dashboards/cpo.yaml")
    provider = load_yaml(provisioning)["providers"][0]
    dashboards = host_path(compose, "grafana", provider["options"]["path"])
    assert list(dashboards.glob("*.json")), f"no dashboards in {dashboards.relative_to(ROOT)}"
    config = host_path(compose, "alertmanager", "/etc/alertmanager/alertmanager.yml")
    assert "route" in load_yaml(config)


def test_compose_env_names_are_settings(compose):
    assert_all_settings(cpo_env_names(compose), "compose.yaml")


def test_compose_endpoints_match_settings(compose, compose_prometheus):
    services = compose["services"]
    env = services["worker-1"]["environment"]
    assert env["CPO_KAFKA_BOOTSTRAP"].split(":")[0] in services
    assert urlparse(env["CPO_REDIS_URL"]).hostname in services
    ports = {"worker": METRICS_PORT, "exporter": EXPORTER_PORT}
    jobs = {job["job_name"]: job for job in compose_prometheus["scrape_configs"]}
    for job_name, command in [("cpo-worker", "worker"), ("cpo-exporter", "exporter")]:
        expected = {f"{name}:{ports[command]}" for name, service in services.items()
                    if service.get("command") == [command]}
        targets = {t for config in jobs[job_name]["static_configs"] for t in config["targets"]}
        assert targets == expected, f"prometheus.yml job {job_name}"
        for service in services.values():
            if service.get("command") == [command]:
                assert f":{ports[command]}/readyz" in " ".join(service["healthcheck"]["test"])
    assert f"127.0.0.1:{EXPORTER_PORT}:{EXPORTER_PORT}" in services["exporter"]["ports"]


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in joined.splitlines() if line.strip()]


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `relative` (or a folder above it) out of the context.
    fnmatch's `*` also matches `/`, so this may leave out more than Docker does, never less."""
    parts = Path(relative).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern.removeprefix(lead))
               for pattern in patterns for prefix in prefixes for lead in ("", "**/"))


def copy_sources() -> list[tuple[str, str]]:
    """(source, destination) of the Dockerfile's COPY lines that read the build context."""
    pairs = []
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY" and not args.startswith("--from"):
            *sources, destination = shlex.split(args)
            pairs += [(source, destination) for source in sources]
    return pairs


def test_dockerfile_is_multistage_pinned_and_non_root():
    instructions = dockerfile_instructions()
    args = dict(a.split("=", 1) for i, a in instructions if i == "ARG" and "=" in a)
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], a.split()[0])
             for i, a in instructions if i == "FROM"]
    assert len(bases) >= 2, "multi-stage: build and runtime"
    for base in bases:
        assert re.match(r"python:3\.11(\.\d+)?-slim", base), f"base {base}: python:3.11-slim"
        assert re.search(r":3\.11\.\d+-|@sha256:", base), f"pin {base} to a patch tag or digest"
    final = instructions[max(n for n, (i, _) in enumerate(instructions) if i == "FROM"):]
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the runtime must not be root"
    assert ("ENTRYPOINT", '["cpo"]') in final
    assert any(i == "RUN" and "pip install ." in a for i, a in instructions)


def test_dockerfile_copies_existing_files_the_context_keeps():
    patterns = dockerignore_patterns()
    for source, _ in copy_sources():
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"
        assert not ignored(source, patterns), f".dockerignore excludes {source}"


def test_dockerfile_install_works_in_a_plain_venv(tmp_path):
    """The build stage's `pip install .` from only the copied files (no deps: no network
    needed for them), then the ENTRYPOINT's `cpo` runs and the package data is installed."""
    patterns = dockerignore_patterns()
    context = tmp_path / "src"
    context.mkdir()
    for source, destination in copy_sources():
        target = context / destination / Path(source).name if destination.endswith("/") \
            else context / destination
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=lambda d, names: [
                n for n in names if ignored(str((Path(d) / n).relative_to(ROOT)), patterns)])
        else:
            shutil.copy2(ROOT / source, target)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--disable-pip-version-check",
         str(context)], check=False, capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    cpo = subprocess.run([str(venv / "bin" / "cpo"), "--help"], check=False,
                         capture_output=True, text=True)
    assert cpo.returncode == 0, cpo.stderr
    installed = next(venv.glob("lib/python*/site-packages/streams"))
    missing = [str(path.relative_to(ROOT / "streams"))
               for path in (ROOT / "streams").rglob("*")
               if path.is_file() and "__pycache__" not in path.parts
               and not (installed / path.relative_to(ROOT / "streams")).is_file()]
    assert not missing, (f"`pip install .` leaves out {missing}: list them under "
                         "[tool.setuptools.package-data] in pyproject.toml")


# --- Kubernetes --------------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    docs = []
    for path in manifest_files():
        docs += [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    return docs


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"want one {kind} {name}, found {len(matches)}"
    return matches[0]


def test_kustomization_lists_every_manifest():
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_objects_validate_against_kubernetes_schemas(objects, version):
    from kubernetes_validate import utils as kubernetes_validate
    version = kubernetes_validate.latest_version() if version == "latest" else version
    builtin = [o for o in objects if not o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {o["kind"] for o in builtin} >= {"Deployment", "Service", "PodDisruptionBudget",
                                             "ConfigMap", "Secret", "Job"}
    for obj in builtin:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {exc.message}")


# No PyPI package ships the Prometheus Operator CRD schemas as plain data (the one that ships
# models, cloudcoil, also installs a pytest plugin into every test run), so these are the CRDs'
# required fields, types and duration pattern for what the manifests use (operator v0.80).
DURATION = {"type": "string",
            "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                       r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
LABEL_SELECTOR = {"type": "object", "properties": {"matchLabels": STRING_MAP}}
OPERATOR_SCHEMAS = {
    "ServiceMonitor": {
        "type": "object", "required": ["selector", "endpoints"],
        "properties": {
            "selector": LABEL_SELECTOR,
            "jobLabel": {"type": "string"},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                               "scheme": {"enum": ["http", "https"]},
                               "interval": DURATION, "scrapeTimeout": DURATION}}}}},
    "PrometheusRule": {
        "type": "object", "required": ["groups"],
        "properties": {"groups": {"type": "array", "items": {
            "type": "object", "required": ["name", "rules"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1}, "interval": DURATION,
                "query_offset": DURATION, "limit": {"type": "integer"},
                "partial_response_strategy": {"type": "string"}, "labels": STRING_MAP,
                "rules": {"type": "array", "items": {
                    "type": "object", "required": ["expr"], "additionalProperties": False,
                    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                    "properties": {
                        "record": {"type": "string"}, "alert": {"type": "string"},
                        "expr": {"type": ["string", "integer"]}, "for": DURATION,
                        "keep_firing_for": DURATION, "labels": STRING_MAP,
                        "annotations": STRING_MAP}}}}}}}},
}


def test_operator_objects_have_the_crds_structure(objects):
    import jsonschema

    operator = [o for o in objects if o["apiVersion"] == "monitoring.coreos.com/v1"]
    assert sorted(o["kind"] for o in operator) == ["PrometheusRule", "ServiceMonitor"]
    for obj in operator:
        assert obj["metadata"]["name"]
        jsonschema.validate(obj["spec"], OPERATOR_SCHEMAS[obj["kind"]])


def test_k8s_env_names_are_settings_and_files_come_from_the_secret(objects):
    assert_all_settings(set().union(*(cpo_env_names(o) for o in objects)), "deploy/kubernetes")
    for obj in objects:
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        pod = obj["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
            for env in container.get("env", []):
                if env["name"].endswith("_FILE"):
                    path = Path(env["value"])
                    secret_name = mounts[str(path.parent)]["secret"]["secretName"]
                    secret = find(objects, "Secret", secret_name)
                    assert path.name in secret["stringData"], f"{env['name']}: no key {path.name}"


@pytest.mark.parametrize("name, port",
                         [("cpo-worker", METRICS_PORT), ("cpo-exporter", EXPORTER_PORT)])
def test_k8s_deployment_probes_ports_service_and_monitor(objects, name, port):
    deployment = find(objects, "Deployment", name)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert "memory" in container["resources"]["limits"]
    # The Service's name is the Prometheus job name the rules use (HELPERS: cpo-worker/-exporter).
    service = find(objects, "Service", name)
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    monitor = find(objects, "ServiceMonitor", "cpo")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics"}


def test_k8s_workers_are_spread_bounded_and_protected(objects):
    worker = find(objects, "Deployment", "cpo-worker")
    pod_labels = worker["spec"]["template"]["metadata"]["labels"]
    config = find(objects, "ConfigMap", "cpo-config")["data"]
    partitions = int(config.get("CPO_PARTITIONS", SETTINGS["partitions"].default))
    assert worker["spec"]["replicas"] <= partitions, "workers beyond the partitions stay idle"
    terms = worker["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert any(t["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod_labels.items()
               for t in terms)
    pdb = find(objects, "PodDisruptionBudget", "cpo-worker")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


# --- Rules: one source for Prometheus and the Prometheus Operator ------------------------------


@pytest.fixture(scope="module")
def rule_groups() -> list[dict]:
    return k8s.render_prometheus_rule(k8s.rule_files(RULES_DIR))["spec"]["groups"]


def test_prometheusrule_equals_the_generated_rules(objects, rule_groups):
    rule = find(objects, "PrometheusRule", "cpo")
    assert rule == k8s.prometheus_rule(rule_groups), (
        "deploy/kubernetes/prometheusrule.yaml is stale: run `python -m streams.k8s`")


def test_streams_k8s_command_writes_the_committed_file(tmp_path):
    output = tmp_path / "prometheusrule.yaml"
    assert k8s.main(["--rules-dir", str(RULES_DIR), "--output", str(output)]) == 0
    assert output.read_text(encoding="utf-8") == (K8S_DIR / "prometheusrule.yaml").read_text(
        encoding="utf-8"), "run `python -m streams.k8s` and commit the result"


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, spaces to '-',
    repeats suffixed -1, -2, ... (code fences skipped)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_fence = False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        match = None if in_fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # links keep their text
        base = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(base, 0)
        seen[base] = count + 1
        anchors.add(base if count == 0 else f"{base}-{count}")
    return anchors


def test_github_anchors():
    text = "# Top\n## `CpoHighRate` fires!\n```\n# not a heading\n```\n## Top\n### A [link](x) b"
    assert github_anchors(text) == {"top", "cpohighrate-fires", "top-1", "a-link-b"}


def test_every_alert_has_a_runbook_url_that_resolves(rule_groups):
    anchors = github_anchors(RUNBOOKS.read_text(encoding="utf-8"))
    alerts = [r for g in rule_groups for r in g["rules"] if "alert" in r]
    assert alerts
    for alert in alerts:
        url = urlparse(alert.get("annotations", {}).get("runbook_url", ""))
        assert url.path.endswith("docs/runbooks.md"), (
            f"{alert['alert']}: runbook_url {url.geturl()!r} is not in docs/runbooks.md")
        assert url.fragment in anchors, (
            f"{alert['alert']}: no heading #{url.fragment} in docs/runbooks.md")
