"""Offline validation of every Kubernetes manifest under deploy/ (run by scripts/test.sh).

1. Schema: each resource against the Kubernetes OpenAPI schemas that the PyPI package
   kubernetes-validate ships (no cluster, no network), strict (unknown fields are errors), for
   the pinned KUBE_VERSION.
2. CRDs: kubernetes-validate has no schema for them and only warns. So, stated plainly, they get
   a check of our own, not the operators' schemas: an InferenceService's predictor containers and
   volumes are validated as a core Pod's (the schema KServe embeds), and a ServiceMonitor's
   fields against a minimal structure we wrote down (selector, endpoints' port/path and bearer
   credentials). Any other kind without a schema is an error.
3. Cross-references a schema cannot see: kustomization lists exactly deploy/k8s's files; the
   Indexed Job has one completion per member of members.txt, whose architectures the trainer
   knows; every ConfigMap, PVC and Secret used is defined (or is a documented Secret); Services
   and HPA select what exists; the serve probes are the Open Inference Protocol's health routes;
   container commands are scripts of deploy/bin.

Usage: validate_manifests.py [TRAINER_BINARY]   (exit 1 on any failure, each one printed)
"""
import pathlib
import re
import subprocess
import sys

import kubernetes_validate
import yaml

KUBE_VERSION = "1.33.0"
ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# Created by hand with kubectl (docs/deploy.md), never committed.
DOCUMENTED_SECRETS = {"mlflow-db": {"password", "uri"}, "digits-serve-token": {"token"}}
errors = []


def fail(msg):
    errors.append(msg)
    print(f"FAIL: {msg}")


def load_all():
    docs = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.relative_to(ROOT), doc))
    return docs


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def schema_check(path, doc):
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        return True
    except kubernetes_validate.SchemaNotFoundError:
        return False
    except kubernetes_validate.ValidationError as e:
        path_s = ".".join(str(p) for p in e.path)
        fail(f"{path}: {name_of(doc)}: {path_s}: {e.message}")
        return True


DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_inference_service(path, doc):
    if doc.get("apiVersion") != "serving.kserve.io/v1beta1":
        fail(f"{path}: InferenceService apiVersion {doc.get('apiVersion')}, want serving.kserve.io/v1beta1")
    if not DNS1123.match(doc.get("metadata", {}).get("name", "")):
        fail(f"{path}: InferenceService name is not a DNS-1123 label")
    pred = doc.get("spec", {}).get("predictor")
    if not isinstance(pred, dict) or not pred.get("containers"):
        fail(f"{path}: InferenceService needs spec.predictor.containers (a custom predictor)")
        return
    unknown = set(pred) - {"containers", "volumes", "minReplicas", "maxReplicas", "serviceAccountName",
                           "nodeSelector", "tolerations", "scaleTarget", "scaleMetric", "timeout"}
    if unknown:
        fail(f"{path}: InferenceService predictor fields not in our structural check: {sorted(unknown)}")
    if len(pred["containers"]) != 1 or pred["containers"][0].get("name") != "kserve-container":
        fail(f"{path}: a KServe custom predictor is one container named kserve-container")
    # The predictor's containers and volumes are a core PodSpec's: validate them as one.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
           "spec": {"containers": pred["containers"], "volumes": pred.get("volumes", [])}}
    schema_check(path, pod)
    return pod


def check_service_monitor(path, doc, services):
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(f"{path}: ServiceMonitor apiVersion {doc.get('apiVersion')}, want monitoring.coreos.com/v1")
    spec = doc.get("spec", {})
    unknown = set(spec) - {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    if unknown:
        fail(f"{path}: ServiceMonitor spec fields not in our structural check: {sorted(unknown)}")
    labels = spec.get("selector", {}).get("matchLabels", {})
    matched = [s for s in services if labels and labels.items() <= s["metadata"].get("labels", {}).items()]
    if not matched:
        fail(f"{path}: ServiceMonitor selector {labels} matches no Service's labels")
    for ep in spec.get("endpoints", []) or [None]:
        if not isinstance(ep, dict):
            fail(f"{path}: ServiceMonitor needs endpoints")
            continue
        unknown = set(ep) - {"port", "path", "interval", "scrapeTimeout", "scheme", "authorization"}
        if unknown:
            fail(f"{path}: ServiceMonitor endpoint fields not in our structural check: {sorted(unknown)}")
        ports = {p.get("name") for s in matched for p in s["spec"]["ports"]}
        if ep.get("port") not in ports:
            fail(f"{path}: ServiceMonitor endpoint port {ep.get('port')!r} is not a port of {ports}")
        if ep.get("path") != "/metrics":
            fail(f"{path}: ServiceMonitor scrapes {ep.get('path')!r}, infer serve's metrics are /metrics")
        auth = ep.get("authorization", {})
        cred = auth.get("credentials", {})
        # infer serve requires the bearer token on /metrics.
        if auth.get("type") != "Bearer" or DOCUMENTED_SECRETS.get(cred.get("name"), set()) != {"token"} \
                or cred.get("key") != "token":
            fail(f"{path}: ServiceMonitor must send the serve token (authorization Bearer from digits-serve-token/token)")


def pod_specs(doc):
    kind, spec = doc.get("kind"), doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "Job"):
        return [spec.get("template", {}).get("spec", {})]
    if kind == "Pod":
        return [spec]
    return []


def main():
    docs = load_all()
    by_kind = {}
    for path, doc in docs:
        by_kind.setdefault(doc.get("kind"), []).append((path, doc))
    k8s_dir = DEPLOY / "k8s"
    kust = yaml.safe_load((k8s_dir / "kustomization.yaml").read_text())
    listed = set(kust.get("resources", []))
    present = {p.name for p in k8s_dir.glob("*.yaml")} - {"kustomization.yaml"}
    if listed != present:
        fail(f"deploy/k8s/kustomization.yaml resources {sorted(listed)} != the files there {sorted(present)}")

    services = [d for _, d in by_kind.get("Service", [])]
    pods = []
    checked = 0
    for path, doc in docs:
        kind = doc.get("kind")
        if kind == "Kustomization":
            continue
        checked += 1
        if schema_check(path, doc):
            pods += [(path, doc, s) for s in pod_specs(doc)]
        elif kind == "InferenceService":
            pod = check_inference_service(path, doc)
            if pod:
                pods.append((path, doc, pod["spec"]))
        elif kind == "ServiceMonitor":
            check_service_monitor(path, doc, services)
        else:
            fail(f"{path}: {name_of(doc)}: no Kubernetes schema and no check of ours for {doc.get('apiVersion')}")

    names = lambda kind: {d["metadata"]["name"] for _, d in by_kind.get(kind, [])}
    configmaps, pvcs = names("ConfigMap"), names("PersistentVolumeClaim")
    cm_data = {d["metadata"]["name"]: d.get("data", {}) for _, d in by_kind.get("ConfigMap", [])}

    # References from pods to ConfigMaps, PVCs, Secrets; commands are deploy/bin scripts.
    for path, doc, spec in pods:
        who = f"{path}: {name_of(doc)}"
        for v in spec.get("volumes", []):
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                fail(f"{who}: volume {v['name']}: no ConfigMap {v['configMap']['name']}")
            if "persistentVolumeClaim" in v and v["persistentVolumeClaim"]["claimName"] not in pvcs:
                fail(f"{who}: volume {v['name']}: no PVC {v['persistentVolumeClaim']['claimName']}")
        for c in spec.get("containers", []):
            for ef in c.get("envFrom", []):
                if ef.get("configMapRef", {}).get("name") not in configmaps:
                    fail(f"{who}: envFrom names no ConfigMap of ours: {ef}")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref.get("key") not in DOCUMENTED_SECRETS.get(ref.get("name"), set()):
                    fail(f"{who}: env {e['name']}: Secret {ref.get('name')}/{ref.get('key')} is not a documented one")
            cmd = c.get("command", [])
            if cmd and cmd[0].startswith("/app/"):
                script = ROOT / cmd[0][len("/app/"):]
                if not script.is_file():
                    fail(f"{who}: command {cmd[0]}: no {script.relative_to(ROOT)} in the repository")
            if "image" in c and c["image"].split(":")[0] == "digit-recognizer":
                envs = set()
                for ef in c.get("envFrom", []):
                    envs |= set(cm_data.get(ef.get("configMapRef", {}).get("name"), {}))
                envs |= {e["name"] for e in c.get("env", [])}
                # What deploy/bin/common.sh and the three scripts require.
                for need in ("MEMBERS_FILE", "MLFLOW_TRACKING_URI"):
                    if need not in envs:
                        fail(f"{who}: container {c['name']} lacks {need}")

    # The Indexed Job: one completion per member; architectures the trainer knows.
    members = [l.split() for l in cm_data.get("digits-members", {}).get("members.txt", "").splitlines()
               if l.strip() and not l.strip().startswith("#")]
    if not members or any(len(m) != 2 or not m[1].isdigit() for m in members):
        fail(f"ConfigMap digits-members: members.txt must be 'ARCHITECTURE SEED' lines, got {members}")
    jobs = {d["metadata"]["name"]: d for _, d in by_kind.get("Job", [])}
    train = jobs.get("digits-train", {}).get("spec", {})
    if train.get("completionMode") != "Indexed":
        fail("Job digits-train must be completionMode: Indexed")
    if train.get("completions") != len(members):
        fail(f"Job digits-train has completions {train.get('completions')}, members.txt lists {len(members)}")
    if train.get("parallelism", 1) > train.get("completions", 0):
        fail("Job digits-train: parallelism above completions")
    limits = train.get("template", {}).get("spec", {}).get("containers", [{}])[0].get("resources", {}).get("limits", {})
    if "nvidia.com/gpu" not in limits:
        fail("Job digits-train: members request no nvidia.com/gpu")
    if len(sys.argv) > 1:
        help_text = subprocess.run([sys.argv[1], "--help"], capture_output=True, text=True, check=True).stdout
        known = set(re.findall(r"^\s+- (\w+):", help_text, re.M))
        for arch, _ in members:
            if arch not in known:
                fail(f"members.txt: {arch!r} is not an architecture of `trainer --help`")

    # Services select pods that exist; the HPA scales a Deployment that exists.
    templates = [d["spec"]["template"]["metadata"].get("labels", {}) for _, d in docs
                 if d.get("kind") in ("Deployment", "StatefulSet")]
    for s in services:
        sel = s["spec"].get("selector", {})
        if not any(sel.items() <= t.items() for t in templates):
            fail(f"Service {s['metadata']['name']}: selector {sel} matches no pod template")
    for _, h in by_kind.get("HorizontalPodAutoscaler", []):
        ref = h["spec"]["scaleTargetRef"]
        if ref.get("kind") != "Deployment" or ref.get("name") not in names("Deployment"):
            fail(f"HPA {h['metadata']['name']}: scales {ref}, not one of our Deployments")

    # Serving: the Open Inference Protocol's health routes as probes.
    for path, doc, spec in pods:
        for c in spec.get("containers", []):
            if c.get("command", [None])[0] != "/app/deploy/bin/serve.sh":
                continue
            ready = c.get("readinessProbe", {}).get("httpGet", {}).get("path")
            live = c.get("livenessProbe", {}).get("httpGet", {}).get("path")
            if (ready, live) != ("/v2/health/ready", "/v2/health/live"):
                fail(f"{path}: {name_of(doc)}: probes {ready}, {live}; want /v2/health/ready, /v2/health/live")

    if errors:
        print(f"error: {len(errors)} problem(s) in deploy/ manifests")
        sys.exit(1)
    print(f"ok: {checked} manifests under deploy/ valid against Kubernetes {KUBE_VERSION} (strict schemas; "
          f"{len(by_kind.get('InferenceService', []))} InferenceService, {len(by_kind.get('ServiceMonitor', []))} "
          f"ServiceMonitor by our own structural check) and cross-references consistent")


if __name__ == "__main__":
    main()
