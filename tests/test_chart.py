"""The Helm chart (charts/spend-exporter), rendered and linted by Helm's own Go SDK (helm-python-sdk, no helm binary).

Core objects are validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields fail),
the operator's objects against the CRDs' own schemas (tests/data/crds/, with their source). The PrometheusRule and
the dashboards must equal the shipped files; the probes are sent as the kubelet sends them to the exporter that the
rendered config and web config describe.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import http.client
import json
import re
import shutil
import ssl
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from exporter.app import build_app
from exporter.config import load_config
from exporter.web import UNAUTHENTICATED_PATHS
from tests.helpers import running
from tests.pki import make_ca, make_leaf, write_pem

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "spend-exporter"
EXAMPLES = CHART / "examples"
RULES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
CRDS = ROOT / "tests" / "data" / "crds"
KPS = yaml.safe_load((ROOT / "tests" / "data" / "kube-prometheus-stack-selectors.yaml").read_text())
NAMESPACE = "monitoring"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
KUBE_VERSIONS = ["1.25", kubernetes_validate.latest_version()]
NOW = dt.datetime(2025, 3, 15, 10, 30, tzinfo=dt.UTC)
PASSWORD = "scrape password 7Yh2"

EVERYTHING: dict[str, Any] = {
    "existingSecret": "spend-exporter-credentials",
    "webConfig": {
        "tls_server_config": {
            "cert_file": "/etc/spend-exporter/tls/tls.crt",
            "key_file": "/etc/spend-exporter/tls/tls.key",
        },
        "basic_auth_users": {"prometheus": "$2y$10$" + "a" * 53},
    },
    "webConfigTLSSecret": "spend-exporter-tls",
    "image": {"repository": "registry.example.com/spend-exporter", "digest": "sha256:" + "0" * 64},
    "runbookBaseURL": "https://git.example.com/platform/spend/blob/main/docs/runbook.md",
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/spend"}},
    "serviceMonitor": {
        "enabled": True,
        "labels": {"release": "kube-prometheus-stack"},
        "basicAuth": {"secretName": "spend-exporter-scrape"},
        "tlsConfig": {"ca": {"secret": {"name": "spend-exporter-tls", "key": "ca.crt"}}, "serverName": "spend"},
        "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"], "regex": "spend_exporter_api_.*"}],
    },
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "dashboards": {"enabled": True, "annotations": {"grafana_folder": "Spend"}},
    "alertmanagerConfig": {
        "enabled": True,
        "teams": {
            "search": {
                "pager": {"pagerdutyConfigs": [{"routingKey": {"name": "spend-alerting", "key": "pd-search"}}]},
                "chat": {"slackConfigs": [{"apiURL": {"name": "spend-alerting", "key": "slack"}, "channel": "#s"}]},
            }
        },
        "fallback": {"name": "spend-finops", "chat": {"webhookConfigs": [{"url": "https://hooks.example.com/x"}]}},
        "guard": {
            "enabled": True,
            "tokenSecret": {"name": "spend-alerting"},
            "tlsConfig": {"insecureSkipVerify": True},
        },
    },
    "networkPolicy": {
        "enabled": True,
        "restrictEgress": True,
        "ingressFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
    },
    "persistence": {"storageClass": "gp3", "size": "2Gi"},
    "podLabels": {"azure.workload.identity/use": "true"},
    "extraArgs": ["--log.format=json"],
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as c:
        yield c


def render(chart: helm.Chart, values: dict[str, Any] | None = None, release: str = "spend") -> list[dict[str, Any]]:
    """Every object the chart renders (NOTES.txt left out), as Helm's engine renders it for an install."""
    out = chart.render(values or {}, name=release, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for name, text in sorted(out.items()):
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def example(name: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return values


def _strict(schema: Any) -> Any:
    """A CRD schema where unknown fields fail, as the API server's strict field validation makes them fail
    (it would otherwise prune them silently: a typo would vanish)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


CRD_SCHEMAS = {
    (d["apiVersion"], d["kind"]): _strict(d["openAPIV3Schema"])
    for d in (json.loads(p.read_text()) for p in sorted(CRDS.glob("*.json")))
}


def validate(doc: dict[str, Any]) -> None:
    """Against the Kubernetes schemas, or the operator CRD's schema; any other kind is an error."""
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        jsonschema.Draft202012Validator(CRD_SCHEMAS[key]).validate(doc)
        assert set(doc["metadata"]) <= {"name", "namespace", "labels", "annotations"}
        return
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


# --------------------------------------------------------------------------- renders, lint, schema


def test_default_render(chart: helm.Chart, tmp_path: Path) -> None:
    docs = render(chart)
    assert sorted(d["kind"] for d in docs) == [
        "ConfigMap", "Deployment", "PersistentVolumeClaim", "Service", "ServiceAccount",
    ]  # fmt: skip
    for d in docs:
        validate(d)
        assert d["metadata"]["namespace"] == NAMESPACE
    deploy = one(docs, "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    assert c["image"] == f"spend-exporter:{chart.metadata['appVersion']}"
    assert pod["automountServiceAccountToken"] is False
    assert one(docs, "ServiceAccount")["metadata"]["name"] == pod["serviceAccountName"]

    # the cache: the PVC, mounted where the image's working directory puts cache_path (Dockerfile: WORKDIR, VOLUME)
    dockerfile = (ROOT / "Dockerfile").read_text()
    (workdir,) = re.findall(r"^WORKDIR (\S+)", dockerfile.split("\nFROM ")[-1], re.M)
    (volume,) = re.findall(r"^VOLUME (\S+)", dockerfile, re.M)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["cache"] == volume
    assert (
        volumes["cache"]["persistentVolumeClaim"]["claimName"] == one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    )
    cm = one(docs, "ConfigMap")
    raw = yaml.safe_load(cm["data"]["config.yml"])
    assert (Path(workdir) / raw["cache_path"]).resolve().is_relative_to(volume)
    # the config the pod reads is the ConfigMap's, and the exporter accepts it
    assert f"--config.file={mounts['config']}/config.yml" in c["args"]
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
    (tmp_path / "config.yml").write_text(cm["data"]["config.yml"])
    cfg, _ = load_config(tmp_path / "config.yml")
    assert cfg.listen_address.endswith(f":{c['ports'][0]['containerPort']}")
    # the rest of the root filesystem is read-only: /tmp is an emptyDir
    assert "emptyDir" in volumes[next(n for n, p in mounts.items() if p == "/tmp")]
    # the Service reaches the pod's metrics port
    svc = one(docs, "Service")
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"] == "metrics"


def test_everything_enabled(chart: helm.Chart) -> None:
    docs = render(chart, EVERYTHING)
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == [
        "AlertmanagerConfig", "ConfigMap", "Deployment", "NetworkPolicy", "PersistentVolumeClaim", "PrometheusRule",
        "Secret", "Service", "ServiceAccount", "ServiceMonitor",
    ]  # fmt: skip
    for d in docs:
        validate(d)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "registry.example.com/spend-exporter@sha256:" + "0" * 64
    assert c["envFrom"] == [{"secretRef": {"name": "spend-exporter-credentials"}}]
    assert "--web.config.file=/etc/spend-exporter/web/web.yml" in c["args"] and c["args"][-1] == "--log.format=json"
    assert pod["volumes"][-1] == {"name": "tls", "secret": {"secretName": "spend-exporter-tls"}}
    assert one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    sa = one(docs, "ServiceAccount")
    assert sa["metadata"]["annotations"] == EVERYTHING["serviceAccount"]["annotations"]
    assert one(docs, "PersistentVolumeClaim")["spec"]["storageClassName"] == "gp3"
    web = yaml.safe_load(one(docs, "Secret")["stringData"]["web.yml"])
    assert web == EVERYTHING["webConfig"]
    # the ServiceMonitor scrapes as the web config demands, and keeps the job name the alerts use
    (ep,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert ep["scheme"] == "https" and ep["tlsConfig"]["serverName"] == "spend"
    assert ep["basicAuth"] == {
        "username": {"name": "spend-exporter-scrape", "key": "username"},
        "password": {"name": "spend-exporter-scrape", "key": "password"},
    }
    assert ep["relabelings"][0] == {"action": "replace", "targetLabel": "job", "replacement": "spend-exporter"}
    assert sum('job="spend-exporter"' in p.read_text() for p in RULES), "the rules no longer watch job=spend-exporter"


def test_files_as_credentials(chart: helm.Chart) -> None:
    docs = render(chart, {"existingSecret": "gcp-sa", "existingSecretAs": "files", "persistence": {"enabled": False}})
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert "envFrom" not in c
    assert {"name": "credentials", "mountPath": "/etc/spend-exporter/secrets", "readOnly": True} in c["volumeMounts"]
    assert {"name": "credentials", "secret": {"secretName": "gcp-sa"}} in pod["volumes"]
    assert {"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}} in pod["volumes"]
    assert "PersistentVolumeClaim" not in {d["kind"] for d in docs}
    for d in docs:
        validate(d)


@pytest.mark.parametrize("values", [{}, EVERYTHING], ids=["default", "everything"])
def test_lint(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v1.25.0")
    assert report["errors"] == []
    # "icon is recommended" is the only remark: there is no published icon to point at
    assert [m["error"] for m in report["messages"]] == ["icon is recommended"]


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_examples_render_and_validate(chart: helm.Chart, name: str) -> None:
    chart.validate_schema(example(name))
    for d in render(chart, example(name)):
        validate(d)


BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"replicaCount": 2}, "additional properties 'replicaCount'"),
    ({"image": {"repository": ""}}, "/image/repository"),
    ({"image": {"repository": "r", "digest": "latest"}}, "/image/digest"),
    ({"image": {"repository": "r", "pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"existingSecretAs": "both"}, "/existingSecretAs"),
    ({"config": {"listen_address": "localhost"}}, "/config/listen_address"),
    ({"config": {"sources": [{"type": "openai"}]}}, "/config/sources/0"),
    ({"webConfig": {"basic_auth_users": {"prometheus": "plain text password"}}}, "/webConfig/basic_auth_users"),
    ({"webConfig": {"basic_auth_user": {}}}, "/webConfig"),
    ({"persistence": {"size": "lots"}}, "/persistence/size"),
    ({"persistence": {"enabled": "yes"}}, "/persistence/enabled"),
    ({"serviceMonitor": {"labels": {"release": 1}}}, "/serviceMonitor/labels/release"),
    ({"serviceMonitor": {"interval": "1 minute"}}, "/serviceMonitor/interval"),
    ({"prometheusRule": {"enable": True}}, "/prometheusRule"),
    ({"dashboards": {"labels": {"grafana_dashboard": 1}}}, "/dashboards/labels/grafana_dashboard"),
    ({"alertmanagerConfig": {"teams": {"search": {"pager": {"name": "x"}}}}}, "/alertmanagerConfig/teams/search"),
    ({"alertmanagerConfig": {"teams": {"search": {"sms": {}}}}}, "/alertmanagerConfig/teams/search"),
    ({"alertmanagerConfig": {"teams": {"search": {}}}}, "/alertmanagerConfig/teams/search"),
    ({"alertmanagerConfig": {"fallback": {"name": "spend-finops", "receiver": {}}}}, "/alertmanagerConfig/fallback"),
    ({"alertmanagerConfig": {"guard": {"enabled": True}}}, "/alertmanagerConfig/guard"),
    ({"runbookBaseURL": "docs/runbook.md"}, "/runbookBaseURL"),
    ({"service": {"port": 70000}}, "/service/port"),
    ({"probes": {"liveness": {"periodSeconds": 0}}}, "/probes/liveness/periodSeconds"),
    ({"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": None}}}, "/serviceAccount/annotations"),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_the_schema_rejects(chart: helm.Chart, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as e:
        chart.validate_schema(values)
    assert where in str(e.value)
    with pytest.raises(helm.HelmError, match="schema"):  # an install fails the same way: nothing is rendered
        chart.render(values, name="spend", namespace=NAMESPACE)


# --------------------------------------------------------------------------- the shipped rules and dashboards


def shipped_runbook_base() -> str:
    """The text before '#' of the first runbook_url in spend-alerts.yml (as the chart's template derives it)."""
    m = re.search(r"runbook_url:\s*([^#\s]+)", (ROOT / "prometheus" / "rules" / "spend-alerts.yml").read_text())
    assert m, "spend-alerts.yml has no runbook_url"
    # where the project keeps the one setting ([project.urls] Runbook), the rules were built from it
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("urls", {})
    assert urls.get("Runbook", m.group(1)) == m.group(1)
    return m.group(1)


def shipped_groups(namespace: str | None = None) -> list[dict[str, Any]]:
    """The groups of the shipped rule files; ``namespace``: every alert labelled with it (alertNamespaceLabel)."""
    groups = [g for p in RULES for g in yaml.safe_load(p.read_text())["groups"]]
    for r in (r for g in groups for r in g["rules"] if namespace is not None and "alert" in r):
        r["labels"] = {**r.get("labels", {}), "namespace": namespace}
    return groups


def test_the_chart_links_the_shipped_files_not_copies() -> None:
    for name, target in (("rules", ROOT / "prometheus" / "rules"), ("dashboards", ROOT / "grafana" / "dashboards")):
        link = CHART / "files" / name
        assert link.is_symlink() and link.resolve() == target.resolve()


def test_prometheus_rule_equals_the_shipped_rule_files(chart: helm.Chart) -> None:
    assert RULES, "no prometheus/rules/*.yml"
    rule = one(render(chart, {"prometheusRule": {"enabled": True, "alertNamespaceLabel": False}}), "PrometheusRule")
    assert rule["spec"]["groups"] == shipped_groups()
    validate(rule)


def test_every_alert_carries_the_release_namespace(chart: helm.Chart) -> None:
    """By default (alertNamespaceLabel) the shipped rules plus one label on each alert, nothing else: the
    AlertmanagerConfig's route, which the operator restricts to its namespace, takes every spend alert."""
    rule = one(render(chart, {"prometheusRule": {"enabled": True}}), "PrometheusRule")
    assert rule["spec"]["groups"] == shipped_groups(NAMESPACE)
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert {"SpendExporterDown", "SpendUnallocatedHigh"} <= {r["alert"] for r in alerts}
    assert all(r["labels"]["namespace"] == NAMESPACE for r in alerts)
    assert all(
        "namespace" not in r.get("labels", {}) for g in rule["spec"]["groups"] for r in g["rules"] if "record" in r
    )
    validate(rule)


def test_runbook_base_url_replaces_the_shipped_base(chart: helm.Chart) -> None:
    base = shipped_runbook_base()
    new = "https://git.example.com/platform/spend-exporter/-/blob/main/docs/runbook.md"
    rule = one(render(chart, {"prometheusRule": {"enabled": True}, "runbookBaseURL": new}), "PrometheusRule")
    expected = yaml.safe_load(json.dumps(shipped_groups(NAMESPACE)).replace(base, new))
    assert rule["spec"]["groups"] == expected
    urls = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert urls and all(u.startswith(new + "#") for u in urls)
    assert base not in json.dumps(rule)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing: make test-deps")
def test_prometheus_rule_spec_passes_promtool(chart: helm.Chart, tmp_path: Path) -> None:
    """What the operator hands Prometheus (spec.groups as a rule file) is a valid rule file."""
    values = {"prometheusRule": {"enabled": True}, "runbookBaseURL": "https://wiki.example.com/spend/runbook"}
    rule = one(render(chart, values), "PrometheusRule")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    res = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dashboard_configmaps_equal_the_shipped_files(chart: helm.Chart) -> None:
    assert DASHBOARDS, "no grafana/dashboards/*.json"
    docs = [d for d in render(chart, {"dashboards": {"enabled": True}}) if d["kind"] == "ConfigMap"]
    maps = [d for d in docs if "grafana_dashboard" in d["metadata"]["labels"]]
    assert len(maps) == len(DASHBOARDS)
    seen = {}
    for m in maps:
        validate(m)
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((key, text),) = m["data"].items()
        seen[key] = text
        json.loads(text)  # parses
        assert len(text.encode()) < 1024 * 1024  # a ConfigMap's limit
    assert seen == {p.name: p.read_text() for p in DASHBOARDS}


# --------------------------------------------------------------------------- probes with the web config on


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tls")  # what the kubernetes.io/tls Secret holds
    ca, ca_key = make_ca("spend test CA")
    cert, key = write_pem(d, "tls", *make_leaf("localhost", ca, ca_key, server=True))
    write_pem(d, "ca", ca)
    cert.rename(d / "tls.crt")
    key.rename(d / "tls.key")
    return d


def _probes(deploy: dict[str, Any]) -> list[dict[str, Any]]:
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    return [c["livenessProbe"], c["readinessProbe"]]


WEB_CONFIGS = {
    "basic-auth": {"basic_auth_users": {"prometheus": "HASH"}},
    "tls-and-basic-auth": {
        "tls_server_config": {
            "cert_file": "/etc/spend-exporter/tls/tls.crt",
            "key_file": "/etc/spend-exporter/tls/tls.key",
        },
        "basic_auth_users": {"prometheus": "HASH"},
    },
}


@pytest.mark.parametrize("which", list(WEB_CONFIGS))
def test_probes_pass_with_the_web_config_on(
    chart: helm.Chart, which: str, focus: Any, pki: Path, tmp_path: Path
) -> None:
    """Render the chart, run the exporter as the pod would (the ConfigMap's config, the Secret's web config, the TLS
    Secret's files at their mount path), and send each probe as the kubelet sends it: no credentials, no certificate
    verification. A probe must see 200, not 401; the scrape needs the credentials."""
    rows = [focus.daily(dt.date(2025, 3, 1) + dt.timedelta(days=i), 10.0) for i in range(10)]
    focus.write(tmp_path / "exports" / "a.csv", rows)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web_values = json.loads(json.dumps(WEB_CONFIGS[which]).replace("HASH", hashed))
    values = {
        "config": {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "sources": [{"name": "focus", "type": "focus", "paths": [str(tmp_path / "exports" / "*.csv")]}],
        },
        "webConfig": web_values,
        "webConfigTLSSecret": "spend-exporter-tls" if "tls" in which else "",
        "serviceMonitor": {"enabled": True, "basicAuth": {"secretName": "scrape"}},
    }
    docs = render(chart, values)
    deploy = one(docs, "Deployment")
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    for probe in _probes(deploy):
        assert probe["httpGet"]["path"] in UNAUTHENTICATED_PATHS
        assert probe["httpGet"]["scheme"] == ("HTTPS" if "tls" in which else "HTTP")
        assert "httpHeaders" not in probe["httpGet"]  # no password in the pod spec
    # the pod's files, at the paths the rendered config names
    (tmp_path / "config.yml").write_text(one(docs, "ConfigMap")["data"]["config.yml"])
    secret = next(d for d in docs if d["kind"] == "Secret")
    web_text = secret["stringData"]["web.yml"]
    if "tls" in which:
        web_text = web_text.replace(mounts["tls"], str(pki))
    (tmp_path / "web.yml").write_text(web_text)
    cfg, raw = load_config(tmp_path / "config.yml")
    app = build_app(cfg, now=lambda: NOW)
    try:
        assert all(o.ok for o in app.refresh_all())
        with running(app, tmp_path / "web.yml", raw) as server:
            for probe in _probes(deploy):
                status, _ = _get(server.port, probe["httpGet"]["path"], probe["httpGet"]["scheme"])
                assert status == 200, probe
            (ep,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
            scheme = ep.get("scheme", "http").upper()
            assert _get(server.port, ep["path"], scheme)[0] == 401
            status, body = _get(server.port, ep["path"], scheme, ("prometheus", PASSWORD))
            assert status == 200 and b"spend_cost_daily_usd" in body
    finally:
        app.close()


def test_tcp_probes_when_a_client_certificate_is_required(chart: helm.Chart) -> None:
    tls = {"cert_file": "/etc/spend-exporter/tls/tls.crt", "key_file": "/etc/spend-exporter/tls/tls.key"}
    for extra, tcp in (
        ({"client_ca_file": "/etc/spend-exporter/tls/ca.crt"}, True),  # the exporter's default: require and verify
        ({"client_ca_file": "/etc/spend-exporter/tls/ca.crt", "client_auth_type": "VerifyClientCertIfGiven"}, False),
        ({"client_auth_type": "RequireAnyClientCert"}, True),
        ({}, False),
    ):
        docs = render(chart, {"webConfig": {"tls_server_config": {**tls, **extra}}, "webConfigTLSSecret": "t"})
        for probe in _probes(one(docs, "Deployment")):
            assert (probe.get("tcpSocket") == {"port": "metrics"}) is tcp, extra
            assert ("httpGet" not in probe) is tcp


def _get(port: int, path: str, scheme: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    conn: http.client.HTTPConnection
    if scheme == "HTTPS":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the kubelet does not verify; nor, here, the scrape
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------- kube-prometheus-stack's defaults


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector ({} selects everything)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        op, key, values = e["operator"], e["key"], e.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def test_kube_prometheus_stack_example_is_picked_up_by_its_default_selectors(chart: helm.Chart) -> None:
    values = example("kube-prometheus-stack.yaml")
    docs = render(chart, values)
    ns_labels = {"kubernetes.io/metadata.name": NAMESPACE}
    sm, rule, svc = one(docs, "ServiceMonitor"), one(docs, "PrometheusRule"), one(docs, "Service")
    prom = KPS["prometheus"]
    assert selects(prom["serviceMonitorSelector"], sm["metadata"]["labels"])
    assert selects(prom["serviceMonitorNamespaceSelector"], ns_labels)
    assert selects(prom["ruleSelector"], rule["metadata"]["labels"])
    assert selects(prom["ruleNamespaceSelector"], ns_labels)
    # ... and the ServiceMonitor finds the Service and its port
    assert svc["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
    assert selects(sm["spec"]["selector"], svc["metadata"]["labels"])
    assert {p["name"] for p in svc["spec"]["ports"]} >= {e["port"] for e in sm["spec"]["endpoints"]}
    # the dashboards reach the Grafana sidecar
    sidecar = KPS["grafanaSidecar"]["dashboards"]
    boards = [d for d in docs if d["kind"] == "ConfigMap" and sidecar["label"] in d["metadata"]["labels"]]
    assert len(boards) == len(DASHBOARDS)
    assert all(b["metadata"]["labels"][sidecar["label"]] == sidecar["labelValue"] for b in boards)
    # without the label, the default selector ignores them (so the test can fail)
    bare = copy.deepcopy(values)
    del bare["serviceMonitor"]["labels"]["release"]
    assert not selects(prom["serviceMonitorSelector"], one(render(chart, bare), "ServiceMonitor")["metadata"]["labels"])


def test_alertmanager_config_routes_by_team_then_severity(chart: helm.Chart) -> None:
    values = example("alertmanager-config.yaml")
    am = one(render(chart, values), "AlertmanagerConfig")
    validate(am)
    assert selects(KPS["alertmanager"]["alertmanagerConfigSelector"], am["metadata"]["labels"])
    route = am["spec"]["route"]
    assert route["receiver"] == "spend-finops-chat"
    assert route["matchers"] == [{"name": "alertname", "matchType": "=~", "value": "Spend.+"}]
    receivers = {r["name"]: r for r in am["spec"]["receivers"]}
    teams = values["alertmanagerConfig"]["teams"]
    guard, *by_team, fallback = route["routes"]
    assert guard["receiver"] == "spend-guard" and guard["continue"] is True
    (hook,) = receivers.pop("spend-guard")["webhookConfigs"]
    assert hook["url"] == f"http://spend-spend-exporter.{NAMESPACE}.svc:9877/-/guard/alertmanager"
    assert hook["httpConfig"]["authorization"]["credentials"] == {"name": "spend-alerting", "key": "guard-token"}
    critical = [{"name": "severity", "matchType": "=", "value": "critical"}]
    assert fallback == {
        "receiver": "spend-finops-chat",
        "routes": [{"matchers": critical, "receiver": "spend-finops-pager"}],
    }
    for team, r in zip(sorted(teams), by_team, strict=True):
        ((m),) = r["matchers"]
        assert (m["name"], m["matchType"]) == ("team", "=~")
        # Alertmanager anchors the regular expression, as fullmatch does
        assert re.fullmatch(m["value"], team) and re.fullmatch(m["value"], team.upper())
        assert not re.fullmatch(m["value"], team + "s") and not re.fullmatch(m["value"], "x" + team)
    for team, r in zip(sorted(teams), by_team, strict=True):
        kinds = [k for k in ("pager", "chat") if k in teams[team]]
        assert r["receiver"] == f"spend-{team}-{kinds[-1]}"
        if kinds == ["pager", "chat"]:
            assert r["routes"] == [{"matchers": critical, "receiver": f"spend-{team}-pager"}]
        else:
            assert "routes" not in r
        for kind in kinds:
            assert receivers.pop(f"spend-{team}-{kind}") == {"name": f"spend-{team}-{kind}", **teams[team][kind]}
    fallback_values = values["alertmanagerConfig"]["fallback"]
    for kind in ("pager", "chat"):
        assert receivers.pop(f"spend-finops-{kind}") == {"name": f"spend-finops-{kind}", **fallback_values[kind]}
    assert not receivers


# --------------------------------------------------------------------------- the AlertmanagerConfig, through amtool

# kube-prometheus-stack 88.5.3's default Alertmanager config (values.yaml alertmanager.config, the commit named in
# tests/data/kube-prometheus-stack-selectors.yaml), less its inhibitions and templates: the root under which the
# operator puts each AlertmanagerConfig's route.
KPS_ROOT = {
    "route": {
        "receiver": "null",
        "group_by": ["namespace"],
        "routes": [{"receiver": "null", "matchers": ['alertname = "Watchdog"']}],
    },
    "receivers": [{"name": "null"}],
}


def operator_alertmanager_yml(am: dict[str, Any], enforce_namespace: bool) -> dict[str, Any]:
    """The Alertmanager config the Prometheus Operator (v0.93, pkg/alertmanager/amcfg.go: AddAlertmanagerConfigs,
    convertRoute, makeNamespacedString, the namespace and continueToNextRoute enforcers) makes of one
    AlertmanagerConfig: its route under the root with `continue: true` (and namespace="<its namespace>" unless the
    matcher strategy is None, or OnNamespaceExceptForAlertmanagerNamespace in the Alertmanager's namespace), every
    receiver named <namespace>/<name>/<receiver>. A port of the routing part only: the receivers are left empty,
    which amtool's routing test does not need."""
    prefix = f"{am['metadata']['namespace']}/{am['metadata']['name']}/"
    names = {"groupBy": "group_by", "groupWait": "group_wait", "groupInterval": "group_interval"}
    names |= {"repeatInterval": "repeat_interval", "continue": "continue"}

    def route(r: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"receiver": prefix + r["receiver"]} if r.get("receiver") else {}
        out |= {names[k]: v for k, v in r.items() if k in names}
        if r.get("matchers"):
            out["matchers"] = [f"{m['name']}{m.get('matchType', '=')}{json.dumps(m['value'])}" for m in r["matchers"]]
        if r.get("routes"):
            out["routes"] = [route(child) for child in r["routes"]]
        return out

    top = route(am["spec"]["route"])
    if enforce_namespace:
        top.setdefault("matchers", []).append(f'namespace="{am["metadata"]["namespace"]}"')
    top["continue"] = True
    cfg = copy.deepcopy(KPS_ROOT)
    cfg["route"]["routes"].insert(0, top)
    cfg["receivers"] += [{"name": prefix + r["name"]} for r in am["spec"]["receivers"]]
    return cfg


def amtool_routes(config: Path, labels: dict[str, str]) -> str:
    out = subprocess.run(
        ["amtool", "config", "routes", "test", f"--config.file={config}", *(f"{k}={v}" for k, v in labels.items())],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool missing: make test-deps")
def test_alertmanager_config_routing_through_amtool(chart: helm.Chart, tmp_path: Path) -> None:
    am = one(render(chart, example("alertmanager-config.yaml")), "AlertmanagerConfig")
    p = f"{NAMESPACE}/{am['metadata']['name']}/"
    ns = {"namespace": NAMESPACE}
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(operator_alertmanager_yml(am, enforce_namespace=True)))
    check = subprocess.run(["amtool", "check-config", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    crit, warn = {"severity": "critical", **ns}, {"severity": "warning", **ns}
    guard = p + "spend-guard,"
    cases = [
        ({"alertname": "SpendAIBurnRateHigh", "team": "search", **crit}, guard + p + "spend-search-pager"),
        ({"alertname": "SpendBudgetExceeded", "team": "search", **warn}, guard + p + "spend-search-chat"),
        ({"alertname": "SpendBudgetWarning", "team": "search", **warn}, p + "spend-search-chat"),
        ({"alertname": "SpendSourceDown", "severity": "info", "team": "search", **ns}, p + "spend-search-chat"),
        # case-insensitive, as the shipped subtree
        ({"alertname": "SpendBudgetWarning", "team": "Search", **warn}, p + "spend-search-chat"),
        # a team with a chat receiver only: its critical alerts go there too
        ({"alertname": "SpendAIHourlyCostHigh", "team": "ml-platform", **crit}, p + "spend-ml-platform-chat"),
        # a team not listed, none, unallocated: the fallback, by severity
        ({"alertname": "SpendAIHourlyCostHigh", "team": "frontend", **crit}, p + "spend-finops-pager"),
        ({"alertname": "SpendBudgetWarning", "team": "frontend", **warn}, p + "spend-finops-chat"),
        ({"alertname": "SpendBudgetExceeded", "team": "searchers", **warn}, guard + p + "spend-finops-chat"),
        ({"alertname": "SpendSourceDown", **warn}, p + "spend-finops-chat"),
        ({"alertname": "SpendBudgetWarning", "team": "unallocated", **warn}, p + "spend-finops-chat"),
        # other alerts of the namespace are not spend-exporter's to route
        ({"alertname": "KubePodCrashLooping", "team": "search", **warn}, "null"),
        # with the default OnNamespace strategy, an alert without a namespace label never reaches this config ...
        ({"alertname": "SpendExporterDown", "severity": "critical"}, "null"),
    ]
    for labels, receiver in cases:
        assert amtool_routes(config, labels) == receiver, labels
    # ... so the chart's PrometheusRule gives every alert its namespace (alertNamespaceLabel, on by default): the
    # labels of the rendered rule itself, as Prometheus would add them to the alert
    rule = one(render(chart, {"prometheusRule": {"enabled": True}}), "PrometheusRule")
    down = next(r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("alert") == "SpendExporterDown")
    assert amtool_routes(config, {"alertname": "SpendExporterDown", **down["labels"]}) == p + "spend-finops-pager"
    # without it: OnNamespaceExceptForAlertmanagerNamespace (with the chart in the Alertmanager's namespace) or None,
    # and the operator adds no namespace matcher
    config.write_text(yaml.safe_dump(operator_alertmanager_yml(am, enforce_namespace=False)))
    assert amtool_routes(config, {"alertname": "SpendExporterDown", "severity": "critical"}) == p + "spend-finops-pager"


# --------------------------------------------------------------------------- the chart's README


def _leaves(values: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in values.items():
        path = f"{prefix}{k}"
        # maps a user fills in are values of their own; so are maps of settings passed through as a whole
        if isinstance(v, dict) and v and path not in ("config", "resources", "podSecurityContext", "securityContext"):
            if path in ("probes.liveness", "probes.readiness", "dashboards.labels"):
                out.append(path)
            else:
                out += _leaves(v, path + ".")
        else:
            out.append(path)
    return out


def test_readme_documents_every_value_and_example() -> None:
    text = (CHART / "README.md").read_text()
    table = "\n".join(line for line in text.splitlines() if line.startswith("| `"))
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for leaf in _leaves(defaults):
        assert f"`{leaf}`" in table, f"{leaf} is not in the README's values table"
    for p in EXAMPLES.glob("*.yaml"):
        assert f"(examples/{p.name})" in text, f"examples/{p.name} is not in the README"
    for link in re.findall(r"\]\((?!https?:)([^)#]+)", text):
        assert (CHART / link).exists(), link
