"""The Dockerfile, checked without an engine (none runs here); scripts/test.sh runs it.

Parses the Dockerfile and emulates its two stages on this machine, where the build stage's
WORKDIR (/app) is the repository (its .venv made by the same scripts/setup.sh, target/release by
the same cargo build):
  - build stage: each instruction must be one whose products the test knows (COPY from the
    context, setup.sh -> .venv, cargo build --bin X -> target/release/X, stage-runtime.sh SRC
    DEST -> DEST, which the test runs for real into a scratch folder; apt-get installs nothing
    the runtime copies); anything else fails, so that a new step gets a rule here;
  - runtime stage: every `COPY --from=build` source and `RUN --mount=...,from=build` source must
    be something the build stage produced, and the image layout is assembled from the copies.
Then, on that layout:
  - each binary's RUNPATH (readelf -d target/release/BIN, the repository's path mapped to /app)
    exists and holds the libraries the binary names (NEEDED) that the base image lacks;
  - ORT_DYLIB_PATH and every LD_LIBRARY_PATH entry of ENV exist; PATH finds the three binaries
    and the programs RUN and CMD start;
  - ldd of the binaries and of every ONNX Runtime library, searched as in the image, resolves
    everything inside the layout or to the base image's C/C++ runtime, except the driver's
    libcuda.so.1 (from the host);
  - deploy/bin/image-smoke.sh, the image's smoke step, runs against the layout;
  - every container command of the manifests under deploy/ (/app/deploy/bin/...) is an
    executable in the layout;
  - .dockerignore keeps .venv, target, runs, mlruns out of the build context;
and prints the layout's size (what the runtime stage adds to debian:bookworm-slim).

Usage: dockerfile_test.py [DOCKERFILE]   (ORT_CAPI=DIR stages another ONNX Runtime, e.g. the
onnxruntime-gpu wheel's capi/ folder, as the image has; exit 1 on any failure)
"""
import fnmatch
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARIES = ("trainer", "exporter", "infer")
# In debian:bookworm-slim (libc6, libgcc-s1, libstdc++6 are essential there, apt needs them).
BASE_LIBS = re.compile(r"^(linux-vdso\.so|ld-linux-x86-64\.so|lib(c|m|dl|rt|pthread|util|gcc_s|stdc\+\+)\.so)")
DRIVER_LIBS = {"libcuda.so.1"}
# Top-level patterns only (all this repository's .dockerignore has).
DOCKERIGNORE = [l.strip().strip("/") for l in (ROOT / ".dockerignore").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
errors = []


def fail(msg):
    errors.append(msg)
    print(f"FAIL: {msg}")


def instructions(text):
    """(line number, INSTRUCTION, rest) with continuations joined and comments dropped."""
    out, buf, start = [], "", 0
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        if not buf:
            start = n
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        word, _, rest = buf.partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    return out


def parse_env(rest):
    env = {}
    for tok in shlex.split(rest):
        k, _, v = tok.partition("=")
        env[k] = v
    return env


class Layout:
    """Image paths backed by local paths: (image prefix, local path), longest prefix wins."""

    def __init__(self):
        self.maps = []
        self.ignored = set()

    def add(self, image, local, context=False):
        self.maps.append((image.rstrip("/") or "/", pathlib.Path(local)))
        if context:
            self.ignored.add(image.rstrip("/") or "/")

    def local(self, image, follow=True, depth=0):
        best = None
        for pre, loc in self.maps:
            if image == pre or image.startswith(pre.rstrip("/") + "/"):
                if best is None or len(pre) > len(best[0]):
                    best = (pre, loc)
        if best is None:
            return None
        rel = image[len(best[0]):].lstrip("/")
        parts = [p for p in rel.split("/") if p]
        # `COPY . DIR` brings the context less what .dockerignore keeps out.
        if best[0] in self.ignored and parts and any(fnmatch.fnmatch(parts[0], pat) for pat in DOCKERIGNORE):
            return None
        cur_img, cur = best[0], best[1]
        for i, p in enumerate(parts):
            cur_img = cur_img.rstrip("/") + "/" + p
            cur = cur / p
            if follow and cur.is_symlink() and depth < 20:
                target = os.readlink(cur)
                # A link resolves inside the image, never on this machine.
                nxt = target if target.startswith("/") else os.path.normpath(cur_img.rsplit("/", 1)[0] + "/" + target)
                rest = "/".join(parts[i + 1:])
                return self.local(nxt + ("/" + rest if rest else ""), follow, depth + 1)
        return cur


def main():
    dockerfile = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "Dockerfile")
    insts = instructions(dockerfile.read_text())
    stages, cur = {}, None
    for n, ins, rest in insts:
        if ins == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            cur = m.group(2) or str(len(stages))
            stages[cur] = {"base": m.group(1), "insts": []}
        elif cur is not None:
            stages[cur]["insts"].append((n, ins, rest))
    if list(stages) != ["build", "runtime"]:
        fail(f"want stages build, runtime; got {list(stages)}")
        return finish()
    # Under target/: the filesystem of .venv, so the staging hard-links 3-4 GB instead of copying.
    (ROOT / "target").mkdir(exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="dockerfile-test.", dir=ROOT / "target"))
    try:
        check(stages, tmp)
    finally:
        subprocess.run(["rm", "-rf", str(tmp)])
    finish()


def check(stages, tmp):
    # Build stage.
    build = Layout()
    workdir, app = "/", None
    for n, ins, rest in stages["build"]["insts"]:
        where = f"Dockerfile:{n}: {ins} {rest[:60]}"
        if ins == "WORKDIR":
            workdir = rest
            app = app or rest
        elif ins == "COPY":
            args = shlex.split(rest)
            if any(a.startswith("--from") for a in args):
                fail(f"{where}: the build stage copies from another stage; teach this test")
                continue
            *srcs, dst = args
            slash = "/" if dst.endswith("/") else ""
            dst = os.path.normpath(os.path.join(workdir, dst)) + slash
            for s in srcs:
                if s == ".":
                    build.add(dst, ROOT, context=True)
                elif not (ROOT / s).exists():
                    fail(f"{where}: {s} is not in the build context")
                elif dst.endswith("/"):
                    build.add(dst + pathlib.Path(s).name, ROOT / s)
                else:
                    build.add(dst, ROOT / s)
        elif ins == "RUN":
            if "scripts/setup.sh" in rest:
                venv = ROOT / ".venv"
                if not venv.is_dir():
                    fail(f"{where}: no .venv here (run scripts/setup.sh)")
                build.add(workdir.rstrip("/") + "/.venv", venv)
            elif m := re.search(r"cargo build --release((?:\s+--bin\s+\S+)+)", rest):
                for b in re.findall(r"--bin\s+(\S+)", m.group(1)):
                    build.add(f"{workdir.rstrip('/')}/target/release/{b}", ROOT / "target" / "release" / b)
            elif m := re.search(r"bash (deploy/bin/stage-runtime\.sh) (\S+) (\S+)$", rest):
                src = build.local(m.group(2))
                dest = tmp / "stage" / m.group(3).lstrip("/")
                if src is None:
                    fail(f"{where}: stage-runtime.sh's source {m.group(2)} is not in the build stage")
                    continue
                r = subprocess.run(["bash", str(ROOT / m.group(1)), str(src), str(dest)], capture_output=True, text=True)
                if r.returncode != 0:
                    fail(f"{where}: stage-runtime.sh failed:\n{r.stderr}")
                    continue
                print(f"  {r.stdout.strip()}")
                build.add(m.group(3), dest)
            elif re.match(r"apt-get update\s+&&\s+apt-get install", rest):
                pass
            else:
                fail(f"{where}: the test does not know what this RUN produces; teach it")
    if app != "/app":
        fail(f"build stage WORKDIR {app}, the RUNPATH mapping below assumes /app")

    # Runtime stage: copies from the build stage must be things the build stage produced.
    image, env, cmd = Layout(), {}, None
    runs = []
    for n, ins, rest in stages["runtime"]["insts"]:
        where = f"Dockerfile:{n}: {ins} {rest[:70]}"
        if ins == "COPY":
            args = shlex.split(rest)
            frm = [a.split("=", 1)[1] for a in args if a.startswith("--from=")]
            *srcs, dst = [a for a in args if not a.startswith("--")]
            for s in srcs:
                loc = build.local(s) if frm == ["build"] else ROOT / s
                if frm and frm != ["build"]:
                    fail(f"{where}: copies from {frm}, not the build stage")
                elif loc is None or not loc.exists():
                    fail(f"{where}: {s}: nothing in the build stage produces it")
                elif s.endswith("/") and dst.endswith("/"):
                    image.add(dst, loc)
                elif dst.endswith("/"):
                    image.add(dst + pathlib.Path(s).name, loc)
                else:
                    image.add(dst, loc)
        elif ins == "ENV":
            env.update(parse_env(rest))
            # The image's Python is bookworm's; a venv here made by another Python has its
            # site-packages elsewhere: compare the layouts, not the version.
            here = sorted((ROOT / ".venv" / "lib").glob("python3*"))
            for k, v in env.items():
                for img_py in set(re.findall(r"python3\.\d+", v)):
                    if here and here[0].name != img_py:
                        print(f"  note: ENV {k} names {img_py}, this .venv has {here[0].name}: mapped")
                        env[k] = v.replace(img_py, here[0].name)
        elif ins == "RUN":
            for mount in re.findall(r"--mount=(\S+)", rest):
                opts = dict(o.split("=", 1) for o in mount.split(",") if "=" in o)
                if opts.get("from") == "build" and not (build.local(opts.get("source", "")) or pathlib.Path("/nonexistent")).exists():
                    fail(f"{where}: mounts {opts.get('source')} from the build stage, which does not produce it")
            runs.append((where, re.sub(r"--mount=\S+\s*", "", rest).strip(), re.findall(r"--mount=(\S+)", rest)))
        elif ins == "CMD":
            cmd = rest
    if errors:
        return

    # RUNPATH of each binary, mapped into the image.
    for b in BINARIES:
        out = subprocess.run(["readelf", "-d", str(ROOT / "target" / "release" / b)], capture_output=True, text=True, check=True).stdout
        needed = re.findall(r"\(NEEDED\).*\[(.+)\]", out)
        for rp in re.findall(r"\((?:RUNPATH|RPATH)\).*\[(.+)\]", out):
            for d in rp.split(":"):
                img = d.replace(str(ROOT), app, 1) if d.startswith(str(ROOT)) else d
                loc = image.local(img)
                if loc is None or not loc.is_dir():
                    fail(f"{b}: RUNPATH {d} -> {img} is not in the image")
                    continue
                missing = [lib for lib in needed if not BASE_LIBS.match(lib) and not (loc / lib).exists()]
                if missing:
                    fail(f"{b}: RUNPATH {img} lacks {missing}")
                else:
                    print(f"ok: {b}: RUNPATH {img} exists in the image and holds its {len([l for l in needed if not BASE_LIBS.match(l)])} libtorch libraries")

    ort = env.get("ORT_DYLIB_PATH")
    ort_loc = image.local(ort) if ort else None
    if not ort_loc or not ort_loc.is_file():
        fail(f"ORT_DYLIB_PATH {ort} is not a file in the image")
    else:
        print(f"ok: ORT_DYLIB_PATH {ort} exists in the image")
    ld_dirs = []
    for d in filter(None, env.get("LD_LIBRARY_PATH", "").split(":")):
        loc = image.local(d)
        if not loc or not loc.is_dir():
            fail(f"LD_LIBRARY_PATH entry {d} is not in the image")
        else:
            ld_dirs.append(loc)
    path_dirs = [image.local(d) for d in env.get("PATH", "").split(":") if d.startswith("/app")]
    path_dirs = [d for d in path_dirs if d and d.is_dir()]

    def on_path(prog):
        return any((d / prog).is_file() and os.access(d / prog, os.X_OK) for d in path_dirs)
    for prog in list(BINARIES) + [r[1].split()[0] for r in runs if not r[1].startswith("apt-get")] + \
            ([shlex.split(cmd.strip("[]").replace(",", " "))[0]] if cmd else []):
        if not on_path(prog):
            fail(f"{prog} is not on the image's PATH ({env.get('PATH')})")
    if errors:
        return

    # ldd, searched as in the image: LD_LIBRARY_PATH, then the binary's RUNPATH (mapped), then
    # RPATH $ORIGIN (ldd follows it on the layout's files themselves).
    runpath = image.local(f"{app}/.venv/libtorch/lib")
    search = ":".join(str(p) for p in ld_dirs + [runpath])
    ld_only = ":".join(str(p) for p in ld_dirs)
    layout_roots = [str(loc.resolve()) for _, loc in image.maps]
    objs = [image.local(f"/app/bin/{b}") for b in BINARIES] + sorted(ort_loc.resolve().parent.glob("libonnxruntime*.so*"))
    for obj in objs:
        # Only the trainer has the RUNPATH; ONNX Runtime, loaded by infer, sees LD_LIBRARY_PATH.
        path = search if obj.name == "trainer" else ld_only
        r = subprocess.run(["ldd", str(obj)], capture_output=True, text=True, env=dict(os.environ, LD_LIBRARY_PATH=path))
        bad = []
        for line in r.stdout.splitlines():
            m = re.match(r"\s*(\S+)(?: => (\S+))?", line)
            name, where = m.group(1), m.group(2)
            if where == "not":
                if name not in DRIVER_LIBS:
                    bad.append(f"{name} not found")
            elif where and not BASE_LIBS.match(name) and not any(os.path.realpath(where).startswith(root) for root in layout_roots):
                bad.append(f"{name} from {where}, outside the image")
        if r.returncode != 0 or bad:
            fail(f"ldd {obj.name}: {bad or r.stderr.strip()}")
        else:
            print(f"ok: ldd {obj.name}: every library in the image (or the base's C/C++ runtime{', or the driver' if 'libcuda' in r.stdout else ''})")

    # The image's smoke step, on the layout.
    for where, run, mounts in runs:
        if run.startswith("apt-get"):
            continue
        words = shlex.split(run)
        args = []
        for w in words[1:]:
            for mount in mounts:
                opts = dict(o.split("=", 1) for o in mount.split(",") if "=" in o)
                if w.startswith(opts.get("target", "\0") + "/"):
                    w = str(build.local(opts["source"])) + w[len(opts["target"]):]
            args.append(w)
        prog = next(d / words[0] for d in path_dirs if (d / words[0]).is_file())
        # ORT_DYLIB_PATH as the image has it, links unresolved: ONNX Runtime looks for its
        # providers beside that path.
        ort_unresolved = image.local(os.path.dirname(ort)) / os.path.basename(ort)
        senv = dict(os.environ, PATH=":".join(map(str, path_dirs)) + ":/usr/bin:/bin", ORT_DYLIB_PATH=str(ort_unresolved),
                    LD_LIBRARY_PATH=search)
        senv.pop("MLFLOW_TRACKING_URI", None)
        r = subprocess.run([str(prog)] + args, capture_output=True, text=True, env=senv, cwd=tempfile.gettempdir())
        if r.returncode != 0:
            fail(f"{where}: fails on the layout:\n{(r.stdout + r.stderr)[-3000:]}")
        else:
            print("ok: " + "\n    ".join(l for l in r.stdout.splitlines() if l.startswith("smoke:")))

    # The Kubernetes manifests start the image's entry scripts by absolute path.
    import yaml
    for f in sorted((ROOT / "deploy").rglob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            for c in (c for c in commands(doc) if c.startswith("/app/")):
                loc = image.local(c)
                if not loc or not os.access(loc, os.X_OK):
                    fail(f"{f.relative_to(ROOT)} starts {c}, not an executable in the image")
    ignored = {l.strip().rstrip("/") for l in (ROOT / ".dockerignore").read_text().splitlines()}
    if missing := {".venv", "target", "runs", "mlruns"} - ignored:
        fail(f".dockerignore does not exclude {sorted(missing)}")
    size = subprocess.run(["du", "-scb"] + [str(loc) for _, loc in image.maps], capture_output=True, text=True).stdout
    total = int(size.splitlines()[-1].split()[0])
    print(f"ok: the runtime stage adds {total / 1e9:.2f} GB ({total / 2**30:.2f} GiB) to {stages['runtime']['base']}"
          f" (ONNX Runtime from {os.environ.get('ORT_CAPI', 'this .venv')})")


def commands(o):
    """The first word of every container `command` in a manifest."""
    if isinstance(o, dict):
        if isinstance(o.get("command"), list) and o["command"]:
            yield o["command"][0]
        for v in o.values():
            yield from commands(v)
    elif isinstance(o, list):
        for v in o:
            yield from commands(v)


def finish():
    if errors:
        print(f"error: {len(errors)} problem(s) in the Dockerfile")
        sys.exit(1)
    print("ok: Dockerfile: every runtime copy is produced by the build stage; RUNPATH, ORT_DYLIB_PATH, "
          "LD_LIBRARY_PATH and PATH resolve in the image layout; its smoke step passes on it")


if __name__ == "__main__":
    main()
