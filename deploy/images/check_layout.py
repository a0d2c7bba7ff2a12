#!/usr/bin/env python3
"""Checks that the images deploy/images/build.sh produced have the layout that
deploy/images/Containerfile describes: the same components, binary paths, user, working
directory, PATH, entrypoints and OCI labels (with the given version and revision).

    check_layout.py --registry R --tag T --version V --revision REV

Reads the Containerfile, inspects each <R>/<component>:<T> with `buildah --storage-driver
vfs inspect`, and exits 1 listing every difference. Stdlib only.
"""
import argparse
import json
import pathlib
import re
import shlex
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def logical_lines(text):
    """Containerfile instructions with line continuations joined and comments dropped."""
    out, cur = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not cur and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    if cur:
        out.append(cur)
    return out


def parse_containerfile(path):
    """Returns {stage: {"from": base, "labels": {}, "env": {}, "user", "workdir",
    "entrypoint", "copies": [(sources, dest)]}} in file order."""
    stages, stage = {}, None
    for line in logical_lines(path.read_text()):
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?$", rest.strip(), re.I)
            if not m:
                raise SystemExit(f"cannot parse FROM line: {line}")
            stage = m.group(2) or f"stage{len(stages)}"
            stages[stage] = {"from": m.group(1), "labels": {}, "env": {}, "copies": []}
        elif stage is None:
            continue
        elif word == "LABEL":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                stages[stage]["labels"][key] = value
        elif word == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                stages[stage]["env"][key] = value
        elif word == "USER":
            stages[stage]["user"] = rest.strip()
        elif word == "WORKDIR":
            stages[stage]["workdir"] = rest.strip()
        elif word == "ENTRYPOINT":
            stages[stage]["entrypoint"] = json.loads(rest)
        elif word == "COPY":
            args = shlex.split(rest)
            flags = [a for a in args if a.startswith("--")]
            paths = [a for a in args if not a.startswith("--")]
            stages[stage]["copies"].append((flags, paths[:-1], paths[-1]))
    return stages


def resolve(stages, name, key):
    """A setting of stage `name`, inherited from the stage it is built FROM."""
    while name in stages:
        if key in stages[name]:
            return stages[name][key]
        name = stages[name]["from"]
    return None


def merged(stages, name, key):
    chain = []
    while name in stages:
        chain.append(stages[name][key])
        name = stages[name]["from"]
    out = {}
    for d in reversed(chain):
        out.update(d)
    return out


def expected(args):
    stages = parse_containerfile(HERE / "Containerfile")
    components = [n for n, s in stages.items() if s["from"] == "runtime"]
    binaries = []
    for flags, sources, dest in stages["runtime"]["copies"]:
        if "--from=build" in flags:
            binaries += [dest.rstrip("/") + "/" + pathlib.PurePath(s).name for s in sources]
    subst = {"${VERSION}": args.version, "${REVISION}": args.revision}
    want = {}
    for c in components:
        labels = merged(stages, c, "labels")
        for k, v in labels.items():
            for var, value in subst.items():
                v = v.replace(var, value)
            labels[k] = v
        want[c] = {
            "User": resolve(stages, c, "user"),
            "WorkingDir": resolve(stages, c, "workdir"),
            "Entrypoint": resolve(stages, c, "entrypoint"),
            "Env": merged(stages, c, "env"),
            "Labels": labels,
        }
    return components, binaries, want


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--registry", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--revision", required=True)
    args = p.parse_args()

    components, binaries, want = expected(args)
    problems = []
    script = (HERE / "build.sh").read_text()
    m = re.search(r"^COMPONENTS=\(([^)]*)\)", script, re.M)
    script_components = m.group(1).split() if m else []
    if sorted(script_components) != sorted(components):
        problems.append(f"build.sh COMPONENTS {script_components} != Containerfile targets {components}")
    m = re.search(r"^TOOLS=\(([^)]*)\)", script, re.M)
    tools = m.group(1).split() if m else []
    want_bins = sorted(f"/usr/local/bin/{c}" for c in components + tools)
    if sorted(binaries) != want_bins:
        problems.append(f"Containerfile copies {sorted(binaries)}, expected {want_bins}")

    for c in components:
        image = f"{args.registry}/{c}:{args.tag}"
        res = subprocess.run(
            ["buildah", "--storage-driver", "vfs", "inspect", "--type", "image", image],
            capture_output=True, text=True)
        if res.returncode != 0:
            problems.append(f"{image}: cannot inspect: {res.stderr.strip()}")
            continue
        cfg = json.loads(res.stdout)["OCIv1"]["config"]
        w = want[c]
        env = dict(e.split("=", 1) for e in cfg.get("Env") or [])
        checks = {
            "User": (cfg.get("User"), w["User"]),
            "WorkingDir": (cfg.get("WorkingDir") or "/", w["WorkingDir"]),
            "Entrypoint": (cfg.get("Entrypoint"), w["Entrypoint"]),
            "Env": ({k: env.get(k) for k in w["Env"]}, w["Env"]),
            # Builders add their own labels (io.buildah.version); compare the OCI ones.
            "Labels": ({k: v for k, v in (cfg.get("Labels") or {}).items()
                        if k.startswith("org.opencontainers.")}, w["Labels"]),
        }
        for field, (got, exp) in checks.items():
            if got != exp:
                problems.append(f"{image}: {field} is {got!r}, the Containerfile says {exp!r}")
    if problems:
        print("image layout differs from deploy/images/Containerfile:", file=sys.stderr)
        for line in problems:
            print(f"  - {line}", file=sys.stderr)
        return 1
    print(f"image layout matches the Containerfile: {len(components)} images "
          f"({', '.join(components)}), user {want[components[0]]['User']}, "
          f"binaries {', '.join(binaries)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
