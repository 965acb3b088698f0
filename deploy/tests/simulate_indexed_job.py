"""The Kubernetes deployment's contract, run as local processes (no cluster here).

Reads the manifests of deploy/k8s and runs what their containers run, with the environment they
give (ConfigMap digits-ensemble + each container's env), paths and addresses mapped to a scratch
folder and 127.0.0.1:
  1. `mlflow server` with the environment of deploy/k8s/mlflow.yaml (the venv's mlflow; sqlite in
     place of PostgreSQL, a local artifact folder in place of the volume); the Service's host
     names must pass its allowed-hosts check, another name must not;
  2. the training Indexed Job: its container command (deploy/bin/member.sh) once per index,
     JOB_COMPLETION_INDEX=0..N-1, side by side; member 1 is SIGKILLed (its whole process group,
     as a pod deletion does) once its first epoch is checkpointed, then started again with the
     same command and environment, and must resume the same MLflow run;
  3. the registration Job's command (deploy/bin/register.sh), started alongside, which must
     wait for the members, then register them under one alias;
  4. the serve Deployment's command (deploy/bin/serve.sh), which pulls the registered
     models:/ URIs; its readiness and liveness probe paths must answer 200, a v2 inference
     request with the bearer token must give the labels offline `infer` gives on the same
     models, and /metrics must require the token.
MLflow's own client then checks one experiment with N finished runs, one metric value per epoch
(none repeated by the resume), and each member's alias on a version of its run.

Usage: simulate_indexed_job.py BIN_DIR DATA_ZIP [N] [EPOCHS]   (exit 1 on failure)
SIM_BACKEND_STORE_URI=postgresql://... runs the server on that database instead of sqlite.
The member list is N cnn_digits lines (seeds 1..N) instead of the ConfigMap's six: the same
format, cheap enough for a CPU test.
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
VENV_BIN = ROOT / ".venv" / "bin"


TMP = None


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    if TMP:
        print(f"(logs kept in {TMP})", file=sys.stderr)
    sys.exit(1)


def manifests():
    docs = {}
    for path in K8S.glob("*.yaml"):
        for d in yaml.safe_load_all(path.read_text()):
            if d and "metadata" in d:
                docs[(d["kind"], d["metadata"]["name"])] = d
    return docs


def container(doc):
    return doc["spec"]["template"]["spec"]["containers"][0]


def container_env(docs, c):
    """What the pod's container sees: envFrom ConfigMaps, then env literals (secrets excluded)."""
    env = {}
    for ef in c.get("envFrom", []):
        env.update(docs[("ConfigMap", ef["configMapRef"]["name"])]["data"])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
    return env


def local_command(c):
    cmd = list(c["command"])
    if not cmd[0].startswith("/app/deploy/bin/"):
        die(f"container {c['name']} runs {cmd[0]}, not a deploy/bin script")
    return [str(ROOT / cmd[0][len("/app/"):])] + cmd[1:]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url, body=None, headers=None, timeout=30):
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Procs:
    """Child processes, each in its own process group (a pod's containers die together)."""

    def __init__(self):
        self.procs = []

    def start(self, name, cmd, env, log):
        f = open(log, "w")
        p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, cwd=env.get("SIM_CWD"))
        self.procs.append((name, p))
        return p

    @staticmethod
    def kill(p, sig):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass

    def stop_all(self):
        for _, p in self.procs:
            if p.poll() is None:
                self.kill(p, signal.SIGTERM)
        for _, p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill(p, signal.SIGKILL)
                p.wait()


def wait_for(what, cond, timeout, procs=()):
    t = time.time()
    while not cond():
        for name, p, log in procs:
            if p.poll() is not None and p.returncode != 0:
                die(f"{name} exited with {p.returncode} while waiting for {what}; its log ends:\n"
                    + "".join(open(log).readlines()[-25:]))
        if time.time() - t > timeout:
            die(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.25)


def tail(log, n=25):
    return "".join(open(log).readlines()[-n:])


def main():
    bin_dir = pathlib.Path(sys.argv[1]).resolve()
    data = pathlib.Path(sys.argv[2]).resolve()
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    epochs = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    if n < 2 or epochs < 2:
        die("need N >= 2 members and EPOCHS >= 2 (a member is killed after its first epoch)")
    sys.stdout.reconfigure(line_buffering=True)
    docs = manifests()
    global TMP
    tmp = TMP = pathlib.Path(tempfile.mkdtemp(prefix="indexed-job-sim."))
    procs = Procs()
    t0 = time.time()
    try:
        run(docs, tmp, procs, bin_dir, data, n, epochs)
    finally:
        procs.stop_all()
    print(f"ok: Indexed Job simulation ({n} members, {epochs} epochs, one killed and resumed) in {time.time() - t0:.0f} s")
    subprocess.run(["rm", "-rf", str(tmp)])


def run(docs, tmp, procs, bin_dir, data, n, epochs):
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    base["PATH"] = f"{bin_dir}:{VENV_BIN}:{base['PATH']}"
    base["GIT_PYTHON_REFRESH"] = "quiet"
    # Where the exporter looks for its self-check images when DATA is unset: not here.
    base["SIM_CWD"] = str(tmp)

    # 1. The tracking server, configured as deploy/k8s/mlflow.yaml configures it.
    mc = container(docs[("Deployment", "mlflow")])
    port = free_port()
    env = {**base, **container_env(docs, mc)}
    # SIM_BACKEND_STORE_URI: a real database instead of sqlite (docs/deploy.md: PostgreSQL).
    backend = os.environ.get("SIM_BACKEND_STORE_URI") or f"sqlite:///{tmp}/mlflow.db"
    env.update(MLFLOW_BACKEND_STORE_URI=backend, MLFLOW_ARTIFACTS_DESTINATION=str(tmp / "mlartifacts"),
               MLFLOW_HOST="127.0.0.1", MLFLOW_PORT=str(port), MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    if mc["command"][:2] != ["mlflow", "server"]:
        die(f"mlflow.yaml runs {mc['command']}, not `mlflow server`")
    log = tmp / "mlflow.log"
    server = procs.start("mlflow server", [str(VENV_BIN / "mlflow"), "server"] + mc["command"][2:], env, log)
    uri = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            return http(f"{uri}/health", timeout=2)[0] == 200
        except OSError:
            return False
    wait_for("mlflow server health", healthy, 180, [("mlflow server", server, log)])
    # The names the pods use for the Service must pass MLflow's Host check; a stranger must not
    # (else the check proves nothing).
    search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    svc_host = docs[("ConfigMap", "digits-ensemble")]["data"]["MLFLOW_TRACKING_URI"].split("//")[1]
    if (s := http(search, headers={"Host": svc_host})[0]) != 200:
        die(f"mlflow server answers {s} to Host: {svc_host} (the trainers' MLFLOW_TRACKING_URI): fix MLFLOW_SERVER_ALLOWED_HOSTS")
    if (s := http(search, headers={"Host": "attacker.example"})[0]) == 200:
        die("mlflow server accepts any Host header: its allowed-hosts check is not in force")
    print(f"ok: mlflow server as configured by mlflow.yaml on {uri} ({backend.split(':')[0]} backend); Host {svc_host} accepted, others refused")

    # The shared environment, mapped onto this machine.
    members_file = tmp / "members.txt"
    members_file.write_text("".join(f"cnn_digits {i + 1}\n" for i in range(n)))
    ckpt_root = tmp / "checkpoints"
    mapped = dict(MLFLOW_TRACKING_URI=uri, MEMBERS_FILE=str(members_file), DATA=str(data),
                  CHECKPOINTS=str(ckpt_root / "ensemble-1"), EPOCHS=str(epochs))

    # 2. The Indexed Job, and 3. the registration Job started at once (it must wait).
    tc = container(docs[("Job", "digits-train")])
    train_env = {**base, **container_env(docs, tc), **mapped}
    # CPU here: no GPU, no bf16 autocast (20x slower on a CPU), one thread per member.
    train_env.update(DEVICE="cpu", THREADS="1", TRAIN_FLAGS="")
    experiment = train_env["EXPERIMENT"]
    rc = container(docs[("Job", "digits-register")])
    reg_env = {**base, **container_env(docs, rc), **mapped, "POLL_SECONDS": "1", "WAIT_SECONDS": "900"}
    reg_log = tmp / "register.log"
    register = procs.start("register", local_command(rc), reg_env, reg_log)

    members = []
    for i in range(n):
        log = tmp / f"member-{i}.log"
        p = procs.start(f"member {i}", local_command(tc), dict(train_env, JOB_COMPLETION_INDEX=str(i)), log)
        members.append([p, log])
    victim = 1
    last = ckpt_root / "ensemble-1" / f"member-{victim}" / "cnn_digits" / "last" / "state.json"
    watch = [(f"member {i}", p, log) for i, (p, log) in enumerate(members)]
    wait_for(f"member {victim}'s first checkpoint", last.exists, 600, watch)
    if members[victim][0].poll() is not None:
        die(f"member {victim} finished before it could be killed: raise EPOCHS")
    run_before = None
    for line in open(members[victim][1]):
        if line.startswith("MLflow run "):
            run_before = line.split()[2]
    Procs.kill(members[victim][0], signal.SIGKILL)
    members[victim][0].wait()
    if (tmp / "checkpoints" / "ensemble-1" / f"member-{victim}" / "done").exists():
        die(f"member {victim} was done before the kill")
    # The registration must still be waiting: a member is not done.
    if register.poll() is not None or "register: member" in open(reg_log).read():
        die(f"register.sh did not wait for the members:\n{tail(reg_log)}")
    print(f"ok: member {victim} SIGKILLed mid-training (run {run_before}); restarting it with the same command")
    log = tmp / f"member-{victim}.restart.log"
    p = procs.start(f"member {victim} (restarted)", local_command(tc), dict(train_env, JOB_COMPLETION_INDEX=str(victim)), log)
    members[victim] = [p, log]
    for i, (p, log) in enumerate(members):
        try:
            rc_ = p.wait(timeout=900)
        except subprocess.TimeoutExpired:
            die(f"member {i} still running after 900 s")
        if rc_ != 0:
            die(f"member {i} exited with {rc_}; its log ends:\n{tail(log)}")
    restart_log = open(members[victim][1]).read()
    if "resuming" not in restart_log or f"resuming run {run_before}" not in restart_log:
        die(f"the restarted member {victim} did not resume run {run_before}:\n{restart_log[-2000:]}")
    print(f"ok: {n} members trained; member {victim} resumed run {run_before}")
    try:
        register.wait(timeout=600)
    except subprocess.TimeoutExpired:
        die(f"register.sh still running 600 s after the members finished:\n{tail(reg_log)}")
    if register.returncode != 0:
        die(f"register.sh exited with {register.returncode}:\n{tail(reg_log)}")
    print(f"ok: register.sh waited for the members and registered them")

    # MLflow's own client: one experiment, N finished runs, one value per epoch, the aliases.
    check = subprocess.run([str(VENV_BIN / "python"), "-c", MLFLOW_CHECK, uri, experiment, str(n), str(epochs),
                            reg_env.get("MODEL_PREFIX", "digits"), reg_env.get("ALIAS", "champion"),
                            str(ckpt_root / "ensemble-1")],
                           env=dict(base, GIT_PYTHON_REFRESH="quiet"), capture_output=True, text=True)
    if check.returncode != 0:
        die(f"MLflow's view of the ensemble is wrong:\n{check.stdout}{check.stderr[-3000:]}")
    print(check.stdout.strip())

    # 4. The serve Deployment's command, from the registry.
    sc = container(docs[("Deployment", "digits-serve")])
    sport = free_port()
    token = "sim-token-" + os.urandom(8).hex()
    serve_env = {**base, **container_env(docs, sc), **mapped, "ADDR": f"127.0.0.1:{sport}",
                 "CACHE_DIR": str(tmp / "cache"), "INFER_SERVE_TOKEN": token}
    slog = tmp / "serve.log"
    serve = procs.start("infer serve", local_command(sc), serve_env, slog)
    surl = f"http://127.0.0.1:{sport}"
    ready_path = sc["readinessProbe"]["httpGet"]["path"]
    live_path = sc["livenessProbe"]["httpGet"]["path"]

    def ready():
        try:
            return http(surl + ready_path, timeout=2)[0] == 200
        except OSError:
            return False
    wait_for("infer serve readiness", ready, 300, [("infer serve", serve, slog)])
    if http(surl + live_path)[0] != 200:
        die(f"liveness probe path {live_path} does not answer 200")
    with zipfile.ZipFile(data) as z:
        rows = z.read(next(m for m in z.namelist() if m.endswith("test.csv"))).decode().splitlines()[1:]
    k = 16
    pixels = [int(v) for r in rows[:k] for v in r.split(",")]
    body = json.dumps({"inputs": [{"name": "input", "shape": [k, 784], "datatype": "UINT8", "data": pixels}],
                       "outputs": [{"name": "label"}]}).encode()
    hdr = {"Content-Type": "application/json"}
    if http(f"{surl}/v2/models/ensemble/infer", body, hdr)[0] != 401:
        die("v2 inference without the bearer token was not refused with 401")
    status, out = http(f"{surl}/v2/models/ensemble/infer", body, dict(hdr, Authorization=f"Bearer {token}"))
    if status != 200:
        die(f"v2 inference answered {status}: {out[:500]!r}\n{tail(slog)}")
    labels = next(o for o in json.loads(out)["outputs"] if o["name"] == "label")["data"]
    # The same registered models through offline `infer`: the served labels must be its labels.
    uris = ",".join(f"models:/{reg_env.get('MODEL_PREFIX', 'digits')}-{i}@{reg_env.get('ALIAS', 'champion')}" for i in range(n))
    sub = tmp / "offline.csv"
    off = subprocess.run([str(bin_dir / "infer"), "--ensemble", uris, str(data), "-o", str(sub),
                          "--cache-dir", str(tmp / "cache-offline")], env=dict(base, MLFLOW_TRACKING_URI=uri),
                         capture_output=True, text=True)
    if off.returncode != 0:
        die(f"offline infer on {uris} failed:\n{off.stderr[-2000:]}")
    offline = [int(l.split(",")[1]) for l in sub.read_text().splitlines()[1:k + 1]]
    if labels != offline:
        die(f"served labels {labels} != offline infer's {offline}")
    if http(f"{surl}/metrics")[0] != 401 or http(f"{surl}/metrics", headers={"Authorization": f"Bearer {token}"})[0] != 200:
        die("/metrics: want 401 without the token and 200 with it (the ServiceMonitor sends it)")
    print(f"ok: infer serve from {uris}: probes {ready_path}, {live_path} 200; v2 ensemble labels of {k} images "
          f"= offline infer's; token required on inference and /metrics")
    Procs.kill(serve, signal.SIGTERM)
    if serve.wait(timeout=30) != 0:
        die(f"infer serve did not exit 0 on SIGTERM:\n{tail(slog)}")


MLFLOW_CHECK = r"""
import sys
from mlflow import MlflowClient
uri, experiment, n, epochs, prefix, alias, ckpts = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
c = MlflowClient(tracking_uri=uri, registry_uri=uri)
exps = [e for e in c.search_experiments() if e.name == experiment]
assert len(exps) == 1, f"{len(exps)} experiments named {experiment}"
runs = c.search_runs([exps[0].experiment_id])
assert len(runs) == n, f"{len(runs)} runs in {experiment}, want {n} (one per member)"
for r in runs:
    assert r.info.status == "FINISHED", f"run {r.info.run_id}: {r.info.status}"
    steps = [m.step for m in c.get_metric_history(r.info.run_id, "accuracy")]
    assert sorted(steps) == sorted(set(steps)) and len(steps) == epochs, f"run {r.info.run_id}: accuracy at steps {steps}, want {epochs} distinct"
for i in range(n):
    run = open(f"{ckpts}/member-{i}/done").read().split()[2]
    v = c.get_model_version_by_alias(f"{prefix}-{i}", alias)
    assert v.run_id == run, f"{prefix}-{i}@{alias} is version {v.version} of run {v.run_id}, member {i} trained run {run}"
print(f"ok: MLflow: one experiment {experiment!r}, {n} FINISHED runs, {epochs} accuracy values each (none repeated), {prefix}-0..{n - 1}@{alias} on the members' runs")
"""

if __name__ == "__main__":
    main()
