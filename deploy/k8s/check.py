#!/usr/bin/env python3
"""Renders and checks every deployable kustomization under deploy/k8s (CI: .ci/run).

For each of overlays/* and participant/:
1. `kubectl kustomize` renders it (kubectl must be installed: no check is skipped);
2. every object is validated: built-in kinds against the Kubernetes OpenAPI schemas of
   PyPI `kubernetes-validate` (strict: unknown fields fail) for each version in
   KUBERNETES_VERSIONS; custom resources against the JSON schemas in crds/ (a kind with no
   schema there fails);
3. wiring: every file a component's TOML config names (TLS files, keys, password files,
   the `sslrootcert` in a database url) is a key of a volume mounted at that path, every
   Secret a pod mounts (or a CNPG Cluster names) is made by something in the manifests (a
   cert-manager Certificate, the bootstrap Job, CloudNativePG) or is in OPERATOR_SECRETS
   (docs/deploy.md), with the keys the pod reads; every ConfigMap key an environment
   variable reads is rendered or created by the bootstrap Job; a component connecting to
   the CNPG cluster logs in by certificate (sslcert/sslkey from a Certificate whose CN is
   the url's role, issued by the CA the Cluster trusts for clients; the role has no
   password and pg_hba says `cert`); the public sequencer Services, the certificate names
   and the NetworkPolicy agree with the replica count;
4. `checkov` (PyPI) runs over the rendered manifests with the skips of checkov-skips.yaml
   and must report no failure.

Run from anywhere: `python3 deploy/k8s/check.py [--render-dir DIR]`; needs PyYAML,
jsonschema, kubernetes-validate and checkov (the venv .ci/run makes).
"""

import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jsonschema
import kubernetes_validate
import yaml

K8S = Path(__file__).resolve().parent
# The oldest minor still supported by AKS, EKS and GKE at the time of writing, and the
# newest the installed kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.32.0", kubernetes_validate.latest_version())
# Secrets nothing in the manifests can make, per kustomization (docs/deploy.md): the
# participant's belong to another company (its own PostgreSQL's password and CA; the
# domain CA reaches it from the domain provider); a managed PostgreSQL's CA and role
# passwords come from the provider. With CloudNativePG the domain needs none: its
# PostgreSQL logins are cert-manager client certificates. Target -> name -> keys.
OPERATOR_SECRETS = {
    "participant": {
        "participant-db": {"username", "password"},
        "participant-pg-ca": {"ca.crt"},
        "domain-ca": {"ca.crt"},
    },
    "overlays/managed-postgres": {
        "domain-pg-ca": {"ca.crt"},
        "sequencer-db": {"password"},
        "mediator-db": {"password"},
        "domain-manager-db": {"password"},
    },
}
CERT_MANAGER_KEYS = {"tls.crt", "tls.key", "ca.crt"}
CNPG_CA_KEYS = {"ca.crt", "ca.key"}

errors = []


def error(where, message):
    errors.append(f"{where}: {message}")


def render(directory):
    if shutil.which("kubectl") is None:
        sys.exit("check.py: kubectl is not installed; it is needed to render the overlays (no check is skipped)")
    out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"check.py: kubectl kustomize {directory} failed:\n{out.stderr}")
    return out.stdout, [d for d in yaml.safe_load_all(out.stdout) if d]


def crd_schemas():
    schemas = {}
    for path in sorted((K8S / "crds").glob("*.json")):
        group, kind, version = path.stem.split("_")
        schemas[(f"{group}/{version}", kind)] = json.loads(path.read_text())
    return schemas


def validate_schemas(name, docs, schemas):
    for doc in docs:
        ident = f"{name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        api = doc.get("apiVersion", "")
        if "/" in api and "." in api.split("/")[0] and not api.split("/")[0].endswith(".k8s.io"):
            schema = schemas.get((api, str(doc.get("kind")).lower()))
            if schema is None:
                error(ident, f"no schema for {api} {doc.get('kind')} in deploy/k8s/crds")
                continue
            validator = jsonschema.Draft202012Validator(schema)
            for problem in validator.iter_errors(doc):
                path = ".".join(str(p) for p in problem.absolute_path)
                error(ident, f"{path}: {problem.message}")
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as problem:
                path = ".".join(str(p) for p in problem.path)
                error(ident, f"Kubernetes {version}: {path}: {problem.message}")
            except kubernetes_validate.SchemaNotFoundError as problem:
                error(ident, f"Kubernetes {version}: no schema: {problem}")


def produced_secrets(name, docs):
    """Secret name -> keys, for every Secret something in `docs` (or the operator) makes."""
    made = dict(OPERATOR_SECRETS.get(name, {}))
    for doc in docs:
        kind, spec = doc.get("kind"), doc.get("spec", {})
        if kind == "Certificate":
            made[spec["secretName"]] = CERT_MANAGER_KEYS
        elif kind == "Cluster" and doc["apiVersion"].startswith("postgresql.cnpg.io/"):
            made[f"{doc['metadata']['name']}-ca"] = CNPG_CA_KEYS
        elif kind == "Job":
            for c in job_containers(doc):
                args = c.get("args", [])
                if args[:3] == ["create", "secret", "generic"]:
                    made[args[3]] = from_file_keys(args)
    return made


def job_containers(doc):
    pod = doc["spec"]["template"]["spec"]
    return pod.get("initContainers", []) + pod.get("containers", [])


def from_file_keys(args):
    """The keys `kubectl create secret|configmap --from-file=KEY=PATH` arguments make."""
    return {a.split("=", 1)[1].split("=")[0] for a in args if a.startswith("--from-file=")}


def produced_configmaps(docs):
    """ConfigMap name -> keys, rendered or created by a Job (`kubectl create configmap`)."""
    made = {d["metadata"]["name"]: set(d.get("data", {})) for d in docs if d["kind"] == "ConfigMap"}
    for doc in docs:
        if doc["kind"] == "Job":
            for c in job_containers(doc):
                args = c.get("args", [])
                if args[:2] == ["create", "configmap"]:
                    made[args[2]] = from_file_keys(args)
    return made


def check_cluster_secrets(name, docs, made):
    for doc in docs:
        if doc["kind"] != "Cluster" or not doc["apiVersion"].startswith("postgresql.cnpg.io/"):
            continue
        where = f"{name}: Cluster/{doc['metadata']['name']}"
        certs = doc["spec"].get("certificates", {})
        for field, keys in (("clientCASecret", {"ca.crt"}), ("replicationTLSSecret", {"tls.crt", "tls.key"}),
                            ("serverCASecret", {"ca.crt"}), ("serverTLSSecret", {"tls.crt", "tls.key"})):
            if field in certs:
                have = made.get(certs[field])
                if have is None:
                    error(where, f"certificates.{field} {certs[field]} is made by nothing in the manifests")
                elif not keys <= have:
                    error(where, f"certificates.{field} {certs[field]} lacks {sorted(keys - have)}")
        for role in doc["spec"].get("managed", {}).get("roles", []):
            secret = role.get("passwordSecret", {}).get("name")
            if secret and secret not in made:
                error(where, f"role {role['name']}: passwordSecret {secret} is made by nothing in the manifests")


def check_database_login(where, parsed, mounts, docs):
    """A component talking to the CNPG cluster logs in by certificate, as the role in its url."""
    db = parsed.get("database")
    if not isinstance(db, dict) or "url" not in db:
        return
    url = urlsplit(db["url"])
    clusters = {f"{d['metadata']['name']}-rw": d for d in docs
                if d["kind"] == "Cluster" and d["apiVersion"].startswith("postgresql.cnpg.io/")}
    cluster = clusters.get(url.hostname)
    if cluster is None:
        return  # another server (the participant's own): its login is its operator's business
    role = url.username
    if "password-file" in db or "password-env" in db or url.password:
        error(where, f"[database] for {url.hostname} has a password; the roles log in by certificate")
    if "sslcert" not in db or "sslkey" not in db:
        error(where, f"[database] for {url.hostname} has no sslcert/sslkey (certificate login)")
        return
    directory = db["sslcert"].rsplit("/", 1)[0]
    volume = mounts.get(directory, (None, None))[0] or {}
    secret = volume.get("secret", {}).get("secretName")
    cert = next((d for d in docs if d["kind"] == "Certificate" and d["spec"]["secretName"] == secret), None)
    if cert is None:
        error(where, f"sslcert {db['sslcert']} is not from a cert-manager Certificate (Secret {secret})")
        return
    if cert["spec"].get("commonName") != role:
        error(where, f"Certificate {cert['metadata']['name']} has CN {cert['spec'].get('commonName')!r}, the url's role is {role!r}")
    issuer = next((d for d in docs if d["kind"] == "Issuer" and d["metadata"]["name"] == cert["spec"]["issuerRef"]["name"]), None)
    client_ca = cluster["spec"].get("certificates", {}).get("clientCASecret")
    if issuer is None or issuer["spec"].get("ca", {}).get("secretName") != client_ca:
        error(where, f"Certificate {cert['metadata']['name']} is not issued by the CA of Cluster clientCASecret {client_ca}")
    roles = {r["name"]: r for r in cluster["spec"].get("managed", {}).get("roles", [])}
    if role not in roles or not roles[role].get("disablePassword") or "passwordSecret" in roles[role]:
        error(where, f"role {role} is not a managed role without a password in Cluster {cluster['metadata']['name']}")
    hba = [line.split() for line in cluster["spec"].get("postgresql", {}).get("pg_hba", [])]
    if not any(h[0] == "hostssl" and h[-1] == "cert" and role in h[2].split(",") and h[1] in ("sameuser", url.path.lstrip("/")) for h in hba):
        error(where, f"no `hostssl <{url.path.lstrip('/')}|sameuser> {role} ... cert` line in Cluster pg_hba")


def volume_keys(volume, made, configmaps, where):
    """Keys (file names) a volume provides, or None for a writable/unknown-content volume."""
    if "configMap" in volume:
        cm = configmaps.get(volume["configMap"]["name"])
        if cm is None:
            error(where, f"ConfigMap {volume['configMap']['name']} is not in the manifests")
            return set()
        return set(cm.get("data", {}))
    sources = []
    if "secret" in volume:
        sources = [volume["secret"] | {"name": volume["secret"]["secretName"]}]
    elif "projected" in volume:
        sources = [s["secret"] for s in volume["projected"]["sources"] if "secret" in s]
    else:
        return None
    keys = set()
    for source in sources:
        have = made.get(source["name"])
        if have is None:
            error(where, f"Secret {source['name']} is made by nothing in the manifests nor listed as operator-made")
            continue
        items = source.get("items")
        if items is None:
            keys |= have
            continue
        for item in items:
            if item["key"] not in have:
                error(where, f"Secret {source['name']} has no key {item['key']} (it has {sorted(have)})")
            keys.add(item["path"])
    return keys


def config_paths(value):
    """Absolute paths named in a parsed TOML config, including a database url's sslrootcert."""
    if isinstance(value, dict):
        for v in value.values():
            yield from config_paths(v)
    elif isinstance(value, list):
        for v in value:
            yield from config_paths(v)
    elif isinstance(value, str):
        if value.startswith("/"):
            yield value
        elif value.startswith("postgres://") or value.startswith("postgresql://"):
            for root in parse_qs(urlsplit(value).query).get("sslrootcert", []):
                yield root


def check_wiring(name, docs):
    made = produced_secrets(name, docs)
    check_cluster_secrets(name, docs, made)
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    configmap_keys = produced_configmaps(docs)
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod.get("initContainers", []) + pod["containers"]:
            where = f"{name}: {doc['kind']}/{doc['metadata']['name']} container {c['name']}"
            mounts = {}
            for m in c.get("volumeMounts", []):
                volume = volumes.get(m["name"])
                if volume is None:
                    error(where, f"mounts undefined volume {m['name']}")
                    continue
                mounts[m["mountPath"].rstrip("/")] = (volume, volume_keys(volume, made, configmaps, where))
            for e in c.get("env", []):
                # A file named by an environment override (e.g. <PREFIX>__DATABASE__PASSWORD_FILE).
                value = e.get("value", "")
                if e["name"].endswith("_FILE") and value.startswith("/"):
                    directory, file = value.rsplit("/", 1)
                    keys = mounts.get(directory, (None, set()))[1]
                    if directory not in mounts or (keys is not None and file not in keys):
                        error(where, f"env {e['name']} names {value}, which no mounted volume provides")
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if ref and ref["key"] not in configmap_keys.get(ref["name"], set()):
                    error(where, f"env {e['name']}: ConfigMap {ref['name']} key {ref['key']} is neither rendered nor created by the bootstrap Job")
            args = c.get("args", [])
            if "--config-file" not in args:
                continue
            config = args[args.index("--config-file") + 1]
            directory, file = config.rsplit("/", 1)
            if directory not in mounts or file not in (mounts[directory][1] or set()):
                error(where, f"--config-file {config} is not a key of a volume mounted at {directory}")
                continue
            cm_name = mounts[directory][0]["configMap"]["name"]
            parsed = tomllib.loads(configmaps[cm_name]["data"][file])
            check_database_login(where, parsed, mounts, docs)
            for path in config_paths(parsed):
                if path in mounts:
                    continue  # a directory (e.g. the participant's data-dir) that is a mount
                directory, file = path.rsplit("/", 1)
                if directory not in mounts:
                    error(where, f"{config} names {path}, but nothing is mounted at {directory}")
                elif mounts[directory][1] is not None and file not in mounts[directory][1]:
                    error(where, f"{config} names {path}, but the volume at {directory} has only {sorted(mounts[directory][1])}")


def check_public_sequencers(name, docs):
    sts = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "sequencer"]
    if not sts:
        return
    replicas = sts[0]["spec"]["replicas"]
    public = sorted(
        (d for d in docs if d["kind"] == "Service" and d["spec"].get("type") == "LoadBalancer"),
        key=lambda d: d["metadata"]["name"],
    )
    if not public:
        return
    if len(public) != replicas:
        error(name, f"{len(public)} public sequencer Services for {replicas} replicas")
    pods = sorted(d["spec"]["selector"].get("statefulset.kubernetes.io/pod-name", "") for d in public)
    if pods != sorted(f"sequencer-{i}" for i in range(replicas)):
        error(name, f"public Services select {pods}, not one per sequencer pod")
    cert = next(d for d in docs if d["kind"] == "Certificate" and d["metadata"]["name"] == "sequencer-tls")
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "sequencer-public")
    blocks = {p["ipBlock"]["cidr"] for rule in policy["spec"]["ingress"] for p in rule["from"] if "ipBlock" in p}
    for svc in public:
        host = svc["metadata"].get("annotations", {}).get("external-dns.alpha.kubernetes.io/hostname")
        if host not in cert["spec"]["dnsNames"]:
            error(name, f"{svc['metadata']['name']}: hostname {host} is not a name of certificate sequencer-tls")
        ranges = set(svc["spec"].get("loadBalancerSourceRanges", []))
        if not ranges:
            error(name, f"{svc['metadata']['name']}: no loadBalancerSourceRanges")
        if not ranges <= blocks:
            error(name, f"{svc['metadata']['name']}: source ranges {sorted(ranges - blocks)} not admitted by NetworkPolicy sequencer-public")


def run_checkov(render_dir):
    skips = yaml.safe_load((K8S / "checkov-skips.yaml").read_text())
    for skip in skips:
        if not skip.get("reason", "").strip():
            sys.exit(f"check.py: checkov-skips.yaml: {skip.get('id')} has no reason")
    checkov = Path(sys.executable).with_name("checkov")
    command = [str(checkov), "-d", str(render_dir), "--framework", "kubernetes", "--compact", "--quiet"]
    command += ["--skip-check", ",".join(s["id"] for s in skips)]
    out = subprocess.run(command, capture_output=True, text=True)
    print(out.stdout.strip())
    if out.returncode != 0:
        error("checkov", f"exit {out.returncode}; failures above\n{out.stderr.strip()}")


def main(argv):
    render_dir = Path(argv[argv.index("--render-dir") + 1]) if "--render-dir" in argv else Path(tempfile.mkdtemp())
    render_dir.mkdir(parents=True, exist_ok=True)
    generate = subprocess.run([sys.executable, str(K8S / "generate.py"), "--check"])
    if generate.returncode != 0:
        error("generate.py --check", "generated files are out of date")
    schemas = crd_schemas()
    targets = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
    targets.append(K8S / "participant")
    for target in targets:
        name = str(target.relative_to(K8S))
        text, docs = render(target)
        (render_dir / f"{name.replace('/', '-')}.yaml").write_text(text)
        before = len(errors)
        validate_schemas(name, docs, schemas)
        check_wiring(name, docs)
        check_public_sequencers(name, docs)
        status = "ok" if len(errors) == before else f"{len(errors) - before} problem(s)"
        print(f"{name}: {len(docs)} objects, validated against Kubernetes {', '.join(KUBERNETES_VERSIONS)} and deploy/k8s/crds: {status}")
    run_checkov(render_dir)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
