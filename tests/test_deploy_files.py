"""docker-compose.yml, Dockerfile and k8s/: parsed and checked against the code they deploy.

No Docker engine or cluster runs here, so these files are checked statically: the compose file
against the Compose Specification schema, manifests against the Kubernetes API schemas
(kubernetes-validate, offline), every DEPOTWATCH_* variable against the real settings models,
every command against the real click CLI, and the facility ConfigMap against facility.yaml.
"""

from __future__ import annotations

import base64
import importlib
import json
import re
import shutil
import subprocess
import tomllib
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from schemas.facility import load_facility
from services.cli import LAZY_COMMANDS, cli

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
KUBERNETES_VERSION = "1.30"
SECRET_TEMPLATE = "secret.template.yaml"
PLACEHOLDER = "CHANGE-ME"

# What each command needs beyond the base dependencies (pyproject extras). Light services must
# not get torch: their image is built without extras.
EXTRAS_FOR_COMMAND = {
    "capture": set(),
    "aggregator": set(),
    "infra": set(),
    "position-estimator": {"detect"},
    "plate-ocr": {"ocr"},  # reads the plate boxes the position estimator found
    "state-estimator": {"state"},
    "dashboard": {"dashboards"},
    "worker": {"detect", "ocr", "jobs"},  # video jobs run the detector and the plate reader
}
SECRET_NAME = re.compile(r"(SECRET|SECRET_KEY|PASSWORD|TOKEN|ACCESS_KEY)$", re.IGNORECASE)


# --- what the code accepts --------------------------------------------------------------------


def _settings_classes() -> list[type[BaseSettings]]:
    """The shared Settings, every service's own settings (services/<name>/config.py) and the
    capture settings capture processes and the web app's browser cameras share."""
    from services.runtime.settings import Settings

    found: list[type[BaseSettings]] = [Settings]
    modules = [f"services.{c.parent.name}.config" for c in (REPO / "services").glob("*/config.py")]
    for name in sorted([*modules, "services.runtime.capture_settings"]):
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseSettings)
                and value.__module__ == module.__name__
            ):
                found.append(value)
    return found


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``Model`` or ``Model | None``, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if _nested_model(a)]
        return _nested_model(models[0]) if len(models) == 1 else None
    return None


def _env_names(model: type[BaseModel], prefix: str, delimiter: str | None) -> Iterator[str]:
    for name, field in model.model_fields.items():
        env = f"{prefix}{name}".upper()
        yield env
        nested = _nested_model(field.annotation)
        if nested is not None and delimiter:
            yield from _env_names(nested, env + delimiter, delimiter)


def _click_envvars(command: click.Command) -> Iterator[str]:
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            yield envvar
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            yield from _click_envvars(sub)


@pytest.fixture(scope="module")
def commands() -> dict[str, click.Command]:
    """Every top-level depotwatch command whose module exists, imported (as a deploy would)."""
    ctx = click.Context(cli)
    found = {}
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        if command is not None:
            found[name] = command
    return found


@pytest.fixture(scope="module")
def known_env(commands: dict[str, click.Command]) -> set[str]:
    """Every DEPOTWATCH_* variable some settings model or CLI option reads."""
    names = {"DEPOTWATCH_SECRETS_DIR"}  # read by load_settings itself
    for cls in _settings_classes():
        prefix = cls.model_config.get("env_prefix") or ""
        names |= set(_env_names(cls, prefix, cls.model_config.get("env_nested_delimiter")))
    for command in commands.values():
        names |= set(_click_envvars(command))
    return names


def test_known_env_walks_nested_settings(known_env: set[str]) -> None:
    # The walker itself must work, or every check below would pass vacuously.
    assert {
        "DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS",
        "DEPOTWATCH_S3__SECRET_KEY",
        "DEPOTWATCH_HTTP_PORT",
        "DEPOTWATCH_CAPTURE__AGGREGATOR_ENDPOINT",
        "DEPOTWATCH_AGGREGATOR__BIND",
        "DEPOTWATCH_STATE_ESTIMATOR__PROCESSING_GUARANTEE",
    } <= known_env
    assert "DEPOTWATCH_KAFKA_BOOTSTRAP_SERVERS" not in known_env


def _check_command(commands: dict[str, click.Command], argv: list[str]) -> str:
    """Parse argv with the real CLI (without running it); returns the top-level command name."""
    assert argv, "empty command"
    name, rest = argv[0], argv[1:]
    assert name in LAZY_COMMANDS or name in commands, f"`depotwatch {name}` does not exist"
    command = commands.get(name)
    assert command is not None, f"the module behind `depotwatch {name}` is missing"
    ctx: click.Context | None = None
    top = name
    while isinstance(command, click.Group):
        ctx = click.Context(command, info_name=name, parent=ctx)
        assert rest, f"`depotwatch {top}` needs a subcommand"
        sub = command.get_command(ctx, rest[0])
        assert sub is not None, f"`{rest[0]}` is not a subcommand of `depotwatch {top}`"
        name, rest, command = rest[0], rest[1:], sub
    # Parses and converts every option (unknown or missing ones raise), without running it.
    command.make_context(name, list(rest), parent=ctx)
    return top


def _option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


@pytest.fixture(scope="module")
def facility() -> Any:
    return load_facility(REPO / "facility.yaml")


@pytest.fixture(scope="module")
def extras() -> set[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return set(pyproject["project"]["optional-dependencies"])


# --- docker-compose.yml -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _depotwatch_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if svc["image"].split(":")[0].startswith("depotwatch")
    }


def test_compose_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads((REPO / "tests/deploy_schemas/compose-spec.json").read_text())
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft202012Validator(schema).iter_errors(compose)
    ]
    assert errors == []


def test_compose_schema_check_has_teeth(compose: dict[str, Any]) -> None:
    schema = json.loads((REPO / "tests/deploy_schemas/compose-spec.json").read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["aggregator"]["helthcheck"] = {"test": ["CMD", "true"]}
    assert not jsonschema.Draft202012Validator(schema).is_valid(broken)


def test_compose_runs_kafka_in_kraft_mode_and_minio(compose: dict[str, Any]) -> None:
    services = compose["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in k for k in env)
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    cluster_id = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "KRaft needs a 16-byte id"
    assert services["minio"]["image"].split("/")[-1].startswith("minio:RELEASE.")
    assert services["minio"]["command"][:2] == ["server", "/data"]


def test_compose_env_names_are_real_settings(compose: dict[str, Any], known_env: set[str]) -> None:
    unknown = {
        f"{name}: {var}"
        for name, svc in compose["services"].items()
        for var in svc.get("environment", {})
        if var.upper().startswith("DEPOTWATCH_") and var.upper() not in known_env
    }
    assert unknown == set()


def test_compose_points_every_service_at_kafka_and_minio(compose: dict[str, Any]) -> None:
    for name, svc in _depotwatch_services(compose).items():
        env = svc["environment"]
        assert env["DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092", name
        assert env["DEPOTWATCH_S3__ENDPOINT"] == "minio:9000", name
        assert env["DEPOTWATCH_SECRETS_DIR"] == "/run/secrets", name
        mount = f"./facility.yaml:{env['DEPOTWATCH_FACILITY_CONFIG']}:ro"
        assert mount in svc["volumes"], f"{name} does not mount facility.yaml read-only"


def test_compose_commands_are_real_cli_commands(
    compose: dict[str, Any], commands: dict[str, click.Command], facility: Any
) -> None:
    seen: dict[str, list[list[str]]] = {}
    for svc in _depotwatch_services(compose).values():
        argv = svc["command"]
        seen.setdefault(_check_command(commands, argv), []).append(argv)

    assert seen["infra"] == [["infra", "init", "--config", "/etc/depotwatch/facility.yaml"]]
    assert len(seen["aggregator"]) == 1
    cameras = {_option(argv, "--camera") for argv in seen["capture"]}
    assert len(cameras) >= 2
    assert cameras <= {c.id for c in facility.cameras}
    for command in ("position-estimator", "plate-ocr", "state-estimator"):
        assert sorted(_option(argv, "--flow") for argv in seen[command]) == ["dev", "prod"]


def test_compose_images_carry_the_extras_their_command_needs(
    compose: dict[str, Any], extras: set[str]
) -> None:
    build_of_image: dict[str, str] = {}
    for name, svc in _depotwatch_services(compose).items():
        assert svc["build"]["context"] == ".", name
        built = svc["build"].get("args", {}).get("EXTRAS", "")
        wanted = {e for e in built.split(",") if e}
        assert wanted <= extras, f"{name}: unknown extras {wanted - extras}"
        assert wanted == EXTRAS_FOR_COMMAND[svc["command"][0]], name
        # One image name, one content: never two builds fighting over a tag.
        assert build_of_image.setdefault(svc["image"], built) == built, svc["image"]


def _healthz_port(svc: dict[str, Any]) -> int:
    env = svc["environment"]
    return int(
        env["DEPOTWATCH_DASHBOARD_PORT"]
        if svc["command"][0] == "dashboard"
        else env["DEPOTWATCH_HTTP_PORT"]
    )


def test_compose_healthchecks_hit_healthz(compose: dict[str, Any]) -> None:
    for name, svc in _depotwatch_services(compose).items():
        if svc["command"][:2] == ["infra", "init"]:
            assert svc["healthcheck"] == {"disable": True}
            assert svc["restart"] == "no"
            continue
        test = " ".join(svc["healthcheck"]["test"])
        assert f"http://127.0.0.1:{_healthz_port(svc)}/healthz" in test, name
    for name in ("kafka", "minio"):
        assert compose["services"][name]["healthcheck"]["test"], name


def test_compose_services_wait_for_infra_init(compose: dict[str, Any]) -> None:
    services = compose["services"]

    def waits_for_init(name: str, depth: int = 0) -> bool:
        deps = services[name].get("depends_on", {})
        if deps.get("infra-init", {}).get("condition") == "service_completed_successfully":
            return True
        return depth < 5 and any(waits_for_init(d, depth + 1) for d in deps)

    for name in _depotwatch_services(compose):
        if name != "infra-init":
            assert waits_for_init(name), f"{name} may start before topics exist"
    init = services["infra-init"]["depends_on"]
    assert init == {
        "kafka": {"condition": "service_healthy"},
        "minio": {"condition": "service_healthy"},
    }


def test_compose_secrets_are_files_that_are_never_committed(
    compose: dict[str, Any], known_env: set[str]
) -> None:
    for name, source in compose["secrets"].items():
        path = REPO / source["file"]
        assert path.parent == REPO / "secrets", name
    ignore = (REPO / "secrets/.gitignore").read_text().split()
    assert "*" in ignore
    assert "!.gitignore" in ignore
    for name, svc in _depotwatch_services(compose).items():
        targets = {s["target"] for s in svc["secrets"]}
        assert {"depotwatch_s3__access_key", "depotwatch_s3__secret_key"} <= targets, name
        for target in targets:
            assert target.upper() in known_env, f"{name}: secret file {target} fills nothing"
    for name, svc in compose["services"].items():
        for var, value in svc.get("environment", {}).items():
            if SECRET_NAME.search(var) and not var.endswith("_FILE"):
                pytest.fail(f"{name}: {var}={value!r} puts a secret in the compose file")


# --- Dockerfile ----------------------------------------------------------------------------------


def _dockerfile() -> str:
    # Join continuation lines so each instruction is one line.
    return (REPO / "Dockerfile").read_text().replace("\\\n", " ")


def test_dockerfile_builds_slim_images_with_extras_from_the_lock() -> None:
    text = _dockerfile()
    assert re.search(r"^ARG PYTHON_VERSION=3\.11$", text, re.M)
    assert re.findall(r"^FROM python:\$\{PYTHON_VERSION\}-slim", text, re.M)
    assert re.search(r"^ARG EXTRAS=\"\"$", text, re.M), "light images must default to no extras"
    install = re.search(r"pip install --constraint requirements\.lock (\S+)", text)
    assert install is not None
    assert install.group(1) == '".${EXTRAS:+[${EXTRAS}]}"'
    assert re.search(r'^ENTRYPOINT \["depotwatch"\]$', text, re.M)
    assert re.search(r"^USER depotwatch$", text, re.M), "the image must not run as root"
    assert "/healthz" in re.search(r"^HEALTHCHECK .*$", text, re.M).group(0)  # type: ignore[union-attr]


def test_dockerfile_env_names_are_real_settings(known_env: set[str]) -> None:
    names = set(re.findall(r"\b(DEPOTWATCH_[A-Z0-9_]+)=", _dockerfile()))
    assert names, "the Dockerfile sets no settings at all?"
    assert names - known_env == set()


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    lines = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from nothing, then allow what the image needs"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "requirements.lock",
        "README.md",
        "schemas",
        "services",
        "models",
    }
    for path in ("pyproject.toml", "requirements.lock", "schemas", "services"):
        assert (REPO / path).exists(), path


# --- k8s/ ----------------------------------------------------------------------------------------


def _k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


K8S_DOCS = _k8s_documents()


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    data = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _deployed(kustomization: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(f, d) for f, d in K8S_DOCS if f in kustomization["resources"]]


def _kind(kustomization: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [d for _, d in _deployed(kustomization) if d["kind"] == kind]


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize(
    ("path", "doc"), K8S_DOCS, ids=[f"{p}:{d['kind']}/{d['metadata']['name']}" for p, d in K8S_DOCS]
)
def test_manifest_matches_the_kubernetes_api(path: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kubernetes_schema_check_has_teeth() -> None:
    deployment = next(d for _, d in K8S_DOCS if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_template(
    kustomization: dict[str, Any],
) -> None:
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted([*kustomization["resources"], SECRET_TEMPLATE]) == files
    assert kustomization["namespace"] == "depotwatch"
    assert _kind(kustomization, "Secret") == [], "a real Secret would end up in git"


def test_facility_configmap_is_generated_from_the_repository_file(
    kustomization: dict[str, Any],
) -> None:
    (generator,) = kustomization["configMapGenerator"]
    assert generator["name"] == "facility"
    (source,) = generator["files"]
    key, _, path = source.partition("=")
    assert key == "facility.yaml"
    assert (K8S / path).resolve() == REPO / "facility.yaml"
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not found")
def test_kustomize_build_renders_the_real_facility_yaml() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(K8S)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(built) if d]
    (facility_map,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "facility"
    ]
    assert facility_map["data"]["facility.yaml"] == (REPO / "facility.yaml").read_text()
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "depotwatch", doc["metadata"]["name"]
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_every_deployment_has_probes_limits_and_scrape_annotations(
    kustomization: dict[str, Any],
) -> None:
    deployments = _kind(kustomization, "Deployment")
    assert deployments
    for dep in deployments:
        name = dep["metadata"]["name"]
        template = dep["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        (container,) = _pod_spec(dep)["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        # Liveness asks only what a restart can fix (/livez); the dashboard has no such check.
        live = "/healthz" if name == "dashboard" else "/livez"
        for probe, path in (("livenessProbe", live), ("readinessProbe", "/healthz")):
            get = container[probe]["httpGet"]
            assert get["path"] == path, f"{name} {probe}"
            assert get["port"] in ports, f"{name} {probe} names no declared port"
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert {"cpu", "memory"} <= limits.keys(), name
        assert {"cpu", "memory"} <= requests.keys(), name
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/path"] == "/metrics", name
        assert int(annotations["prometheus.io/port"]) == ports["http"], name
        assert _pod_spec(dep)["securityContext"]["runAsNonRoot"] is True, name


def _containers(kustomization: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in _kind(kustomization, "Deployment") + _kind(kustomization, "Job"):
        for container in _pod_spec(doc)["containers"]:
            yield doc["metadata"]["name"], container


def test_k8s_commands_are_real_cli_commands(
    kustomization: dict[str, Any], commands: dict[str, click.Command], facility: Any
) -> None:
    by_name = {}
    for name, container in _containers(kustomization):
        assert "command" not in container, f"{name}: keep the image's depotwatch entry point"
        _check_command(commands, container["args"])
        by_name[name] = container["args"]

    (job,) = _kind(kustomization, "Job")
    assert _pod_spec(job)["containers"][0]["args"][:2] == ["infra", "init"]
    assert by_name["aggregator"] == ["aggregator"]
    for cam in facility.cameras:
        assert by_name.get(f"capture-{cam.id}") == ["capture", "--camera", cam.id], cam.id
    captures = [n for n in by_name if n.startswith("capture-")]
    assert len(captures) == len(facility.cameras), "a capture for a camera that does not exist"
    for flow_name, flow in facility.flows.items():
        for stage, command in (
            (flow.position_estimator, "position-estimator"),
            (flow.plate_ocr, "plate-ocr"),
            (flow.state_estimator, "state-estimator"),
        ):
            if stage is not None:
                argv = by_name[f"{command}-{flow_name}"]
                assert argv[:3] == [command, "--flow", flow_name]


def test_k8s_images_carry_the_extras_their_command_needs(
    kustomization: dict[str, Any], compose: dict[str, Any]
) -> None:
    extras_of_image = {
        svc["image"]: {e for e in svc["build"].get("args", {}).get("EXTRAS", "").split(",") if e}
        for svc in _depotwatch_services(compose).values()
    }
    for name, container in _containers(kustomization):
        assert container["image"] in extras_of_image, f"{name}: image not built by compose"
        wanted = EXTRAS_FOR_COMMAND[container["args"][0]]
        assert extras_of_image[container["image"]] == wanted, name
    kustomized = {i["name"] for i in kustomization["images"]}
    assert {image.split(":")[0] for image in extras_of_image} == kustomized


def test_k8s_env_names_are_real_settings(
    kustomization: dict[str, Any], known_env: set[str]
) -> None:
    (env_map,) = [
        d for d in _kind(kustomization, "ConfigMap") if d["metadata"]["name"] == "depotwatch-env"
    ]
    names = set(env_map["data"])
    for _, container in _containers(kustomization):
        names |= {e["name"] for e in container.get("env", [])}
        assert container["envFrom"] == [{"configMapRef": {"name": "depotwatch-env"}}]
    assert {n for n in names if n.startswith("DEPOTWATCH_")} - known_env == set()
    assert names == {n for n in names if n.startswith("DEPOTWATCH_")}


def test_k8s_pods_mount_the_facility_and_the_secrets(kustomization: dict[str, Any]) -> None:
    (env_map,) = [
        d for d in _kind(kustomization, "ConfigMap") if d["metadata"]["name"] == "depotwatch-env"
    ]
    config_path = Path(env_map["data"]["DEPOTWATCH_FACILITY_CONFIG"])
    secrets_dir = env_map["data"]["DEPOTWATCH_SECRETS_DIR"]
    for doc in _kind(kustomization, "Deployment") + _kind(kustomization, "Job"):
        name = doc["metadata"]["name"]
        volumes = {v["name"]: v for v in _pod_spec(doc)["volumes"]}
        (container,) = _pod_spec(doc)["containers"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        # A directory mount (not subPath): edits to the ConfigMap reach running pods.
        facility_mount = mounts[str(config_path.parent)]
        assert facility_mount.get("readOnly") is True, name
        assert "subPath" not in facility_mount, name
        assert volumes[facility_mount["name"]]["configMap"]["name"] == "facility", name
        assert volumes[mounts[secrets_dir]["name"]]["secret"]["secretName"] == "depotwatch-secrets"


def test_no_secret_values_are_committed(known_env: set[str]) -> None:
    (template,) = [d for f, d in K8S_DOCS if f == SECRET_TEMPLATE]
    assert template["kind"] == "Secret"
    assert "data" not in template
    assert set(template["stringData"].values()) == {PLACEHOLDER}
    for key in template["stringData"]:
        assert key == "dashboard_token" or key.upper() in known_env, f"{key} fills no setting"
    for path, doc in K8S_DOCS:
        for container in _pod_spec(doc)["containers"] if "template" in doc.get("spec", {}) else []:
            for env in container.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    assert "value" not in env, f"{path}: {env['name']} has a literal value"
    # The built-in development credentials must never reach a deployment file.
    deploy_files = [REPO / "docker-compose.yml", REPO / "Dockerfile", *K8S.glob("*.yaml")]
    for path in deploy_files:
        assert "depotwatch-local-only" not in path.read_text(), path
