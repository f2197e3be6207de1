"""The Helm chart (charts/image-cloner) renders what the kustomize manifests render.

``helm`` is built from its Go module by ``hack/build-helm.sh`` and ``kubectl``
by ``hack/build-kube.sh`` (both cached per machine). The chart is rendered
with ``helm template`` and compared object by object with ``kubectl
kustomize`` of manifests/, manifests/skopeo/, manifests/secret-credentials/
and manifests/monitoring/, and of overlays adding the read-only pull
components (manifests/read-only-pull/ and -secret/), for the same settings.
The one thing compared by meaning rather than by bytes is the controller's
config file: the chart writes every setting of ``config:`` (sorted, without
comments), the kustomize ConfigMap a commented subset; both are loaded with
``cloner.config.load_settings`` and the environment the container gets,
and the resulting ``Settings`` must be equal. Representative renders are
then applied with ``kubectl apply --dry-run=server`` to the e2e API server.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import cloner
from cloner.config import KEYS_BY_YAML, Settings, load_settings
from cloner.model.state import MAX_SHARDS
from devenv.cluster import CONTROLLER_NAMESPACE, Cluster
from devenv.harness import HACK, LOOPBACK, REPO_ROOT, Environment, free_ports, kube_bin_dir
from devenv.waiting import wait_for
from tests.e2e.test_cluster import (
    all_ready,
    apply,
    containerd_manifest_gets,
    controller_pods,
    kubectl,
    pods_running_on,
    pulled_messages,
    sample_workloads,
    template_images,
    wait_controller_gone,
    wait_pods_running,
    workload_pods,
)

pytestmark = pytest.mark.e2e

CHART = REPO_ROOT / "charts" / "image-cloner"
MANIFESTS = REPO_ROOT / "manifests"
#: Settings the chart sets itself (env or the top-level copyBackend value).
CHART_SET = {
    "copyBackend",
    "dockerHost",
    "dockerConfig",
    "controllerNamespace",
    "pullSecret.dockerConfig",
}
#: The image manifests/base/kustomization.yaml deploys (make image builds it).
KUSTOMIZE_TAG = {"image": {"tag": "latest"}}

Objects = dict[tuple[str, str, str, str], dict[str, Any]]


class Helm:
    """The cached helm binary with its cache, config and data homes under ``home``."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(home),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def run(self, *args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``helm ARGS``; returns the completed process (not checked)."""
        env = dict(self.env)
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        return subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=300,
        )

    def template(self, tmp: Path, values: dict[str, Any] | None = None) -> str:
        """``helm template image-cloner CHART -f VALUES``; the YAML stream, or AssertionError."""
        args = ["template", "image-cloner", str(CHART)]
        if values:
            path = tmp / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml"
            path.write_text(yaml.safe_dump(values))
            args += ["-f", str(path)]
        result = self.run(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm built (once per machine) by hack/build-helm.sh."""
    result = subprocess.run(
        [str(HACK / "build-helm.sh")], capture_output=True, text=True, check=False, timeout=1800
    )
    assert result.returncode == 0, result.stderr
    binary = Path(result.stdout.strip().splitlines()[-1])
    return Helm(binary, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def kubectl_bin() -> Path:
    """kubectl built by hack/build-kube.sh (kustomize is built into it)."""
    return kube_bin_dir() / "kubectl"


def kustomize(kubectl_bin: Path, *directories: str | Path) -> Objects:
    """``kubectl kustomize`` of each manifests/ directory (or overlay), merged into one set."""
    objects: Objects = {}
    for directory in directories:
        result = subprocess.run(
            [str(kubectl_bin), "kustomize", str(MANIFESTS / directory)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        objects.update(index(result.stdout))
    return objects


def overlay(directory: Path, resource: str, component: str) -> Path:
    """An overlay of ``manifests/<resource>`` with ``manifests/<component>``, as a user writes it.

    kustomize takes only relative paths to other kustomizations, so they are
    written relative to ``directory``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(MANIFESTS / resource, directory)],
        "components": [os.path.relpath(MANIFESTS / component, directory)],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return directory


def index(stream: str) -> Objects:
    """The objects of a YAML stream by (apiVersion, kind, namespace, name); duplicates fail."""
    objects: Objects = {}
    for doc in yaml.safe_load_all(stream):
        if not doc:
            continue
        meta = doc["metadata"]
        key = (doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"])
        assert key not in objects, f"{key} rendered twice"
        objects[key] = doc
    return objects


def effective_settings(objects: Objects, tmp: Path) -> Settings:
    """What the controller container would load: the config file plus its environment.

    The environment is the controller container's literal ``env`` values and
    ``POD_NAMESPACE`` (the Deployment's namespace), as ``load_settings`` reads them.
    """
    (config,) = [
        o for k, o in objects.items() if k[1] == "ConfigMap" and k[3] == "image-cloner-config"
    ]
    (deployment,) = [o for k, o in objects.items() if k[1] == "Deployment"]
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    environ = {e["name"]: e["value"] for e in containers["controller"]["env"] if "value" in e}
    environ["POD_NAMESPACE"] = deployment["metadata"]["namespace"]
    path = tmp / "effective-config.yaml"
    path.write_text(config["data"]["config.yaml"])
    return load_settings(path, environ=environ)


def assert_same_objects(chart: Objects, manifests: Objects, tmp: Path) -> None:
    """The same objects, equal field by field; the config file equal in effect."""
    assert sorted(chart) == sorted(manifests)
    assert effective_settings(chart, tmp) == effective_settings(manifests, tmp)
    for key, shipped in manifests.items():
        rendered, expected = chart[key], shipped
        if key[1] == "ConfigMap" and key[3] == "image-cloner-config":
            rendered = {**rendered, "data": {"config.yaml": "(compared as Settings)"}}
            expected = {**expected, "data": {"config.yaml": "(compared as Settings)"}}
        assert rendered == expected, f"{key} differs"


# --- rendering: the chart against the kustomize manifests -------------------------


def test_helm_lint_passes_with_the_defaults_and_the_representative_values(
    helm: Helm, tmp_path: Path
) -> None:
    for values in ({}, *REPRESENTATIVE.values()):
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        result = helm.run("lint", "--strict", str(CHART), "-f", str(path))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_the_defaults_render_the_objects_of_manifests(
    helm: Helm, kubectl_bin: Path, tmp_path: Path
) -> None:
    chart = index(helm.template(tmp_path, KUSTOMIZE_TAG))
    manifests = kustomize(kubectl_bin, "")
    assert len(manifests) == 12
    assert_same_objects(chart, manifests, tmp_path)


def test_copy_backend_skopeo_renders_manifests_skopeo_without_the_sidecar(
    helm: Helm, kubectl_bin: Path, tmp_path: Path
) -> None:
    chart = index(helm.template(tmp_path, {**KUSTOMIZE_TAG, "copyBackend": "skopeo"}))
    assert_same_objects(chart, kustomize(kubectl_bin, "skopeo"), tmp_path)
    (deployment,) = [o for k, o in chart.items() if k[1] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["controller"]
    assert effective_settings(chart, tmp_path).copy.backend == "skopeo"
    assert "privileged" not in json.dumps(spec)


def test_an_existing_secret_renders_manifests_secret_credentials(
    helm: Helm, kubectl_bin: Path, tmp_path: Path
) -> None:
    values = {**KUSTOMIZE_TAG, "dockerConfig": {"existingSecret": "docker-configuration"}}
    chart = index(helm.template(tmp_path, values))
    assert_same_objects(chart, kustomize(kubectl_bin, "secret-credentials"), tmp_path)


#: Where the chart and manifests/read-only-pull/ mount pullSecret.dockerConfig.
PULL_DOCKER_CONFIG = Path("/etc/image-cloner/pull-docker/config.json")


def shipped_pull_config() -> str:
    """The placeholder config.json of manifests/read-only-pull/'s ConfigMap."""
    shipped = MANIFESTS / "read-only-pull" / "configmap-docker-pull.yaml"
    return str(yaml.safe_load(shipped.read_text())["data"]["config.json"])


@pytest.mark.parametrize(
    ("values", "resource", "component"),
    [
        ({"pullDockerConfig": {"json": "(shipped)"}}, "", "read-only-pull"),
        (
            {
                "dockerConfig": {"existingSecret": "docker-configuration"},
                "pullDockerConfig": {"existingSecret": "docker-pull-configuration"},
            },
            "secret-credentials",
            "read-only-pull-secret",
        ),
        (
            {
                "copyBackend": "skopeo",
                "pullDockerConfig": {"existingSecret": "docker-pull-configuration"},
            },
            "skopeo",
            "read-only-pull-secret",
        ),
    ],
)
def test_pull_docker_config_renders_the_read_only_pull_components(
    helm: Helm,
    kubectl_bin: Path,
    tmp_path: Path,
    values: dict[str, Any],
    resource: str,
    component: str,
) -> None:
    if values["pullDockerConfig"].get("json") == "(shipped)":
        values = {**values, "pullDockerConfig": {"json": shipped_pull_config()}}
    chart = index(helm.template(tmp_path, {**KUSTOMIZE_TAG, **values}))
    manifests = kustomize(kubectl_bin, overlay(tmp_path / "overlay", resource, component))
    assert_same_objects(chart, manifests, tmp_path)
    assert effective_settings(chart, tmp_path).pull_secrets.docker_config == PULL_DOCKER_CONFIG
    (deployment,) = [o for k, o in chart.items() if k[1] == "Deployment"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    source = volumes["docker-pull-configuration"]
    assert (source.get("secret") or source.get("configMap"))["optional"] is True


def test_without_pull_docker_config_the_controller_gets_no_pull_setting(
    helm: Helm, tmp_path: Path
) -> None:
    chart = index(helm.template(tmp_path))
    assert effective_settings(chart, tmp_path).pull_secrets.docker_config is None
    assert "docker-pull-configuration" not in json.dumps(list(chart.values()))


def test_monitoring_values_render_manifests_monitoring(
    helm: Helm, kubectl_bin: Path, tmp_path: Path
) -> None:
    values = {
        **KUSTOMIZE_TAG,
        "metrics": {"serviceMonitor": {"enabled": True}, "dashboard": {"enabled": True}},
    }
    chart = index(helm.template(tmp_path, values))
    assert_same_objects(chart, kustomize(kubectl_bin, "", "monitoring"), tmp_path)


def test_an_existing_configmap_is_mounted_and_no_credentials_are_rendered(
    helm: Helm, tmp_path: Path
) -> None:
    chart = index(helm.template(tmp_path, {"dockerConfig": {"existingConfigMap": "my-docker"}}))
    assert not [k for k in chart if k[3] == "docker-configuration"]
    (deployment,) = [o for k, o in chart.items() if k[1] == "Deployment"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["docker-configuration"] == {
        "name": "docker-configuration",
        "configMap": {"name": "my-docker"},
    }


def test_the_image_tag_defaults_to_the_app_version_of_the_controller(
    helm: Helm, tmp_path: Path
) -> None:
    chart_yaml = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = {"version": cloner.__version__}  # pyproject.toml reads it from there
    assert chart_yaml["appVersion"] == project["version"]
    (deployment,) = [o for k, o in index(helm.template(tmp_path)).items() if k[1] == "Deployment"]
    images = {c["name"]: c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert images == {"controller": f"image-cloner:{project['version']}", "dind": "docker:27-dind"}


def flatten(raw: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted keys of a nested mapping (``leaderElection.enabled``)."""
    keys: set[str] = set()
    for key, value in raw.items():
        if isinstance(value, dict) and value:
            keys |= flatten(value, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


def test_every_setting_of_the_config_file_is_a_value_with_its_default(
    helm: Helm, tmp_path: Path
) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert flatten(values["config"]) == set(KEYS_BY_YAML) - CHART_SET
    # values.schema.json knows every setting (and refuses any other key).
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["config"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {key.split(".")[0] for key in KEYS_BY_YAML}
    # With the default values the controller runs with the loader's defaults,
    # except where manifests/base chooses otherwise: none today but target.
    settings = effective_settings(index(helm.template(tmp_path)), tmp_path)
    defaults = load_settings(
        None,
        environ={
            "IMAGE_CLONER_TARGET": "registry.example.com/mirror",
            "DOCKER_HOST": "unix:///var/run/dind/docker.sock",
            "IMAGE_CLONER_DOCKER_CONFIG": "/etc/image-cloner/docker/config.json",
            "POD_NAMESPACE": "image-cloner",
        },
    )
    assert settings == defaults


def test_a_changed_setting_reaches_the_config_file_the_port_and_the_state_role(
    helm: Helm, tmp_path: Path
) -> None:
    values = {
        "config": {
            "target": "registry.internal:5000/mirror",
            "metricsPort": 9400,
            "naming": "flat",
            "state": {"configMap": "cloner-state"},
            "leaderElection": {"leaseDuration": 30},
            "pullSecret": {"name": "team-pull"},
        }
    }
    chart = index(helm.template(tmp_path, values))
    settings = effective_settings(chart, tmp_path)
    assert settings.target == "registry.internal:5000/mirror"
    assert (settings.metrics.port, settings.naming) == (9400, "flat")
    election = settings.leader_election
    assert election.lease_duration == 30 and election.renew_deadline == 10
    by_kind = {(k[1], k[3]): o for k, o in chart.items()}
    service = by_kind[("Service", "image-cloner-metrics")]
    assert service["spec"]["ports"][0]["port"] == 9400
    assert service["metadata"]["annotations"]["prometheus.io/port"] == "9400"
    ports = by_kind[("Deployment", "image-cloner")]["spec"]["template"]["spec"]["containers"][0]
    assert ports["ports"][0]["containerPort"] == 9400
    role = by_kind[("Role", "image-cloner-state")]
    assert role["rules"][0]["resourceNames"] == [f"cloner-state-{i}" for i in range(MAX_SHARDS)]
    # get and update of Secrets only on the managed pull Secret's name
    secret_rules = [
        r
        for r in by_kind[("ClusterRole", "image-cloner")]["rules"]
        if r["resources"] == ["secrets"]
    ]
    assert secret_rules == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["team-pull"],
            "verbs": ["get", "update"],
        },
    ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # values.schema.json
        ({"copyBackend": "crane"}, "at '/copyBackend': value must be one of 'docker', 'skopeo'"),
        ({"config": {"nmespaces": {}}}, "at '/config': additional properties 'nmespaces'"),
        ({"config": {"metricsPort": 0}}, "at '/config/metricsPort': minimum: got 0, want 1"),
        ({"config": {"gitops": "ignore"}}, "at '/config/gitops': value must be one of"),
        # templates/_helpers.tpl
        ({"config": {"copyBackend": "skopeo"}}, "config.copyBackend is set by the chart"),
        (
            {"replicas": 2, "config": {"leaderElection": {"enabled": False}}},
            "replicas > 1 needs config.leaderElection.enabled",
        ),
        (
            {"dockerConfig": {"existingSecret": "a", "existingConfigMap": "b"}},
            "at most one of dockerConfig.existingSecret",
        ),
        (
            {"pullDockerConfig": {"existingSecret": "a", "json": "{}"}},
            "at most one of pullDockerConfig.existingSecret",
        ),
        (
            {"config": {"pullSecret": {"dockerConfig": "/etc/pull.json"}}},
            "config.pullSecret.dockerConfig is set by the chart",
        ),
    ],
)
def test_values_the_controller_cannot_run_with_fail_the_render(
    helm: Helm, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = helm.run("template", "image-cloner", str(CHART), "-f", str(path))
    assert result.returncode != 0
    assert message in result.stderr


# --- the API server accepts what the chart renders --------------------------------

#: Representative values beyond the defaults (each also linted above).
REPRESENTATIVE: dict[str, dict[str, Any]] = {
    "skopeo": {"copyBackend": "skopeo"},
    "secret-ha-scheduling": {
        "replicas": 2,
        "dockerConfig": {"existingSecret": "registry-credentials"},
        "pullDockerConfig": {"existingSecret": "registry-read-credentials"},
        "podSecurityContext": {"fsGroup": 10001, "runAsNonRoot": True},
        "nodeSelector": {"example.com/pool": "image-cloner"},
        "tolerations": [
            {
                "key": "example.com/pool",
                "operator": "Equal",
                "value": "image-cloner",
                "effect": "NoSchedule",
            }
        ],
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {
                                "matchLabels": {"app.kubernetes.io/name": "image-cloner"}
                            },
                        },
                    }
                ]
            }
        },
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        "image": {"repository": "ghcr.io/example/image-cloner", "tag": "0.1.0"},
    },
    "monitoring-insecure": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "dashboard": {"enabled": True},
        },
        "config": {"insecureRegistries": ["registry.internal:5000"], "pinDigest": True},
        "dind": {"extraArgs": ["--insecure-registry=registry.internal:5000"]},
        "extraEnv": [{"name": "IMAGE_CLONER_POLL_INTERVAL", "value": "120"}],
    },
    # HTTPS_PROXY, HTTP_PROXY, NO_PROXY (and lowercase) on the controller and
    # the sidecar; HTTP_PROXY empty, so rendered as a name alone.
    "proxy": {"proxy": {"httpsProxy": "http://user:secret@proxy.example.com:3128"}},
}

#: Enough of the Prometheus Operator's CRD for the API server to know the kind.
SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "kind": "ServiceMonitor",
            "plural": "servicemonitors",
            "singular": "servicemonitor",
            "listKind": "ServiceMonitorList",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def service_monitor_crd(env: Environment) -> Iterator[None]:
    """The ServiceMonitor kind known to the e2e API server, established."""
    apply = subprocess.run(
        [str(env.kubectl), f"--kubeconfig={env.kubeconfig}", "apply", "-f", "-"],
        input=json.dumps(SERVICE_MONITOR_CRD),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert apply.returncode == 0, apply.stderr
    env.run_kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/" + SERVICE_MONITOR_CRD["metadata"]["name"],
    )
    yield


def dry_run(env: Environment, stream: str) -> subprocess.CompletedProcess[str]:
    """``kubectl apply --dry-run=server -f -`` of a YAML stream as the admin."""
    return subprocess.run(
        [
            str(env.kubectl),
            f"--kubeconfig={env.kubeconfig}",
            "apply",
            "--dry-run=server",
            "-f",
            "-",
        ],
        input=stream,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize("case", ["defaults", *REPRESENTATIVE])
def test_the_api_server_accepts_the_rendered_chart_in_a_dry_run(
    env: Environment,
    helm: Helm,
    namespace: str,
    service_monitor_crd: None,
    tmp_path: Path,
    case: str,
) -> None:
    # A dry run creates nothing, so the namespaced objects need a namespace
    # that exists: the test's own (the Namespace object is then an update).
    values = {**REPRESENTATIVE.get(case, {}), "namespace": {"name": namespace, "create": True}}
    stream = helm.template(tmp_path, values)
    rendered = index(stream)
    result = dry_run(env, stream)
    assert result.returncode == 0, result.stdout + result.stderr
    accepted = [line for line in result.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(rendered), result.stdout
    # Nothing was created.
    assert env.run_kubectl(
        "-n", namespace, "get", "deployment", "image-cloner", check=False
    ).returncode


@pytest.mark.parametrize("resource", ["", "skopeo"])
def test_the_api_server_accepts_the_proxy_component_in_a_dry_run(
    env: Environment, kubectl_bin: Path, namespace: str, tmp_path: Path, resource: str
) -> None:
    # manifests/proxy/ with the values set as docs/deploy.md shows, moved into
    # the test's namespace (a dry run creates no namespace for the others).
    directory = overlay(tmp_path / "overlay", resource, "proxy")
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    settings = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "image-cloner-proxy", "namespace": "image-cloner"},
        "data": {"HTTPS_PROXY": "http://proxy.example.com:3128"},
    }
    kustomization["patches"] = [{"patch": yaml.safe_dump(settings)}]
    kustomization["namespace"] = namespace
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    objects = kustomize(kubectl_bin, directory)
    assert any(k[1] == "ConfigMap" and k[3].startswith("image-cloner-proxy-") for k in objects)
    result = dry_run(env, yaml.safe_dump_all(objects.values()))
    assert result.returncode == 0, result.stdout + result.stderr
    accepted = [line for line in result.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(objects), result.stdout


def test_the_dry_run_refuses_what_the_api_server_would_refuse(
    env: Environment, helm: Helm, namespace: str, tmp_path: Path
) -> None:
    # The check above can fail: a resources value the API server cannot parse.
    values = {
        "namespace": {"name": namespace, "create": True},
        "resources": {"requests": {"cpu": "lots"}},
    }
    result = dry_run(env, helm.template(tmp_path, values))
    assert result.returncode != 0
    assert "quantities must match the regular expression" in result.stderr


# --- helm install on the real cluster ----------------------------------------------

NS_HELM_APPS = "helm-apps"


def cluster_values(cluster: Cluster, target: str, metrics_port: int) -> dict[str, Any]:
    """Values for the test cluster: what ``write_overlay`` changes, as chart values.

    The images built for the cluster, the owned registry's credentials and
    ``target``, loopback registries allowed without TLS, a 5 s poll, and the
    host-network settings of TESTBED variant (a): ``hostNetwork``, metrics on
    127.0.0.1 and a free port (the probes follow ``metricsAddress``), the API
    server's real address, and dind without bridge or iptables rules.
    """
    assert cluster.images is not None
    env = cluster.env
    assert env.owned.username is not None and env.owned.password is not None
    auth = base64.b64encode(f"{env.owned.username}:{env.owned.password}".encode()).decode()
    controller, controller_tag = cluster.images.controller.rsplit(":", 1)
    dind, dind_tag = cluster.images.dind.rsplit(":", 1)
    return {
        "image": {"repository": controller, "tag": controller_tag},
        "dind": {
            "image": {"repository": dind, "tag": dind_tag},
            "extraArgs": [
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
            ],
        },
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": LOOPBACK},
            {"name": "KUBERNETES_SERVICE_PORT", "value": env.apiserver_url.rsplit(":", 1)[1]},
        ],
        "dockerConfig": {"json": json.dumps({"auths": {env.owned.host: {"auth": auth}}})},
        "config": {
            "target": target,
            "pollInterval": 5,
            "insecureRegistries": [env.public.host, env.owned.host],
            "metricsAddress": LOOPBACK,
            "metricsPort": metrics_port,
        },
    }


def test_helm_install_patches_a_workload_that_runs_from_the_owned_copy_then_uninstall(
    cluster: Cluster, helm: Helm
) -> None:
    env = cluster.env
    target = f"{env.owned.host}/helm"
    (metrics_port,) = free_ports(1)
    values = env.workdir / "helm-values.yaml"  # holds the owned credentials: 0600
    values.touch(mode=0o600)
    values.write_text(yaml.safe_dump(cluster_values(cluster, target, metrics_port)))
    started = time.monotonic()
    install = helm.run(
        "install",
        "image-cloner",
        str(CHART),
        "--namespace",
        "default",
        "-f",
        str(values),
        kubeconfig=env.kubeconfig,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    try:
        kubectl(
            cluster,
            "-n",
            CONTROLLER_NAMESPACE,
            "rollout",
            "status",
            "deploy/image-cloner",
            "--timeout=240s",
        )
        wait_for(
            lambda: any(all_ready(p, 2) for p in controller_pods(cluster)),
            120,
            "controller pod 2/2 Ready",
            interval=1.0,
        )
        print(f"\nhelm install -> controller 2/2 Ready in {time.monotonic() - started:.1f}s")
        status = json.loads(
            helm.run(
                "status",
                "image-cloner",
                "--namespace",
                "default",
                "-o",
                "json",
                kubeconfig=env.kubeconfig,
            ).stdout
        )
        assert status["info"]["status"] == "deployed"

        # A workload from a public image, created after the controller.
        image = f"{env.public.host}/{NS_HELM_APPS}/web:1"
        cluster.build_runnable_image(image, seed=image)
        kubectl(cluster, "create", "namespace", NS_HELM_APPS)
        cluster.wait_namespace_ready(NS_HELM_APPS)
        apply(
            cluster,
            sample_workloads(
                NS_HELM_APPS,
                {"web": image, "init": image, "db": image, "agent": image},
                None,
                None,
            )[:1],
        )
        prefix = target + "/"
        wait_for(
            lambda: all(
                i.startswith(prefix)
                for i in template_images(cluster, NS_HELM_APPS, "deployment", "web")
            ),
            120,
            "the Deployment patched to the owned copy",
            interval=1.0,
        )
        kubectl(
            cluster, "-n", NS_HELM_APPS, "rollout", "status", "deployment/web", "--timeout=180s"
        )
        wait_pods_running(
            cluster, NS_HELM_APPS, "web", prefix, 2, "the web pods Running on the owned copy"
        )
        # The kubelet pulled from the owned registry, which answers only
        # authenticated requests: with the pull Secret the controller made.
        host = env.public.host.replace(":", "-")
        assert containerd_manifest_gets(cluster, f"helm/{host}/{NS_HELM_APPS}/web")
        for pod in workload_pods(cluster, NS_HELM_APPS, "web"):
            messages = pulled_messages(cluster, NS_HELM_APPS, pod["metadata"]["name"])
            assert any(prefix in m for m in messages), messages
    finally:
        uninstall = helm.run(
            "uninstall", "image-cloner", "--namespace", "default", kubeconfig=env.kubeconfig
        )
    assert uninstall.returncode == 0, uninstall.stdout + uninstall.stderr
    wait_controller_gone(cluster)
    for kind in ("clusterrole", "clusterrolebinding"):
        assert kubectl(cluster, "get", kind, "image-cloner", check=False).returncode != 0
    listed = helm.run("list", "--all-namespaces", "-q", kubeconfig=env.kubeconfig)
    assert listed.returncode == 0 and "image-cloner" not in listed.stdout.split()
    # Uninstalling leaves the patched workload running on the owned copy.
    assert pods_running_on(cluster, NS_HELM_APPS, "web", prefix, 2)
    # Out of the way of tests/e2e/test_cluster.py, whose controller shares the cluster.
    kubectl(cluster, "delete", "namespace", NS_HELM_APPS, "--wait=true", "--timeout=120s")
