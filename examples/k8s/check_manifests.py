#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# Checks the manifests of examples/k8s against the services' contract: each
# file parses as YAML into a Service and a Deployment; every container's
# readiness probe is /ready and its liveness probe /live on the port its
# --admin flag opens; terminationGracePeriodSeconds covers the preStop
# sleep, --drain-grace-ms and a call in flight (the 10 s default deadline);
# the services the frontend calls by name are headless and serve the ports
# it dials; every Service selects its Deployment's pods and targets ports
# they have. Prints one line per file; exits 1 with the reasons otherwise.
import glob
import os
import re
import sys

import yaml

DEADLINE_S = 10
here = os.path.dirname(os.path.abspath(__file__))
errors = []
services, deployments = {}, {}


def err(f, msg):
    errors.append(f"{f}: {msg}")


def flag(args, name):
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


for path in sorted(glob.glob(os.path.join(here, "*.yaml"))):
    f = os.path.basename(path)
    try:
        docs = [d for d in yaml.safe_load_all(open(path)) if d is not None]
    except yaml.YAMLError as e:
        err(f, f"does not parse: {e}")
        continue
    kinds = sorted(d.get("kind", "?") for d in docs)
    if kinds != ["Deployment", "Service"]:
        err(f, f"holds {kinds}, not a Service and a Deployment")
    for d in docs:
        name = d["metadata"]["name"]
        (services if d["kind"] == "Service" else deployments)[name] = (f, d)
    print(f"{f}: {', '.join(kinds)}")

for name, (f, dep) in deployments.items():
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    if dep["spec"]["selector"]["matchLabels"].items() - pod["metadata"]["labels"].items():
        err(f, "the Deployment's selector does not match its pods' labels")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    for c in spec["containers"]:
        args = c.get("args", [])
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        admin = flag(args, "admin")
        m = re.fullmatch(r"http://0\.0\.0\.0:(\d+)", admin or "")
        if not m:
            err(f, f"{c['name']}: no --admin=http://0.0.0.0:PORT")
            continue
        if ports.get("admin") != int(m.group(1)):
            err(f, f"{c['name']}: port 'admin' is not the --admin port")
        for probe, want in (("readinessProbe", "/ready"),
                            ("livenessProbe", "/live")):
            g = c.get(probe, {}).get("httpGet", {})
            if g.get("path") != want or g.get("port") not in ("admin", ports.get("admin")):
                err(f, f"{c['name']}: {probe} is not GET {want} on the admin port")
        drain = flag(args, "drain-grace-ms")
        if drain is None:
            err(f, f"{c['name']}: no --drain-grace-ms")
            continue
        pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pre_s = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else 0
        need = pre_s + int(drain) / 1000 + DEADLINE_S
        if grace < need:
            err(f, f"{c['name']}: terminationGracePeriodSeconds {grace} < "
                f"preStop {pre_s} s + drain {int(drain) / 1000:g} s + a call {DEADLINE_S} s")
        listen = flag(args, "listen") or ""
        if ports.get("rpc") is None or not listen.endswith(f":{ports['rpc']}"):
            err(f, f"{c['name']}: port 'rpc' is not the --listen port")
        # Names the container calls: headless Services with that port.
        for a in args:
            m = re.fullmatch(r"--\w+=dns:///([a-z0-9-]+):(\d+)", a)
            if not m:
                continue
            target = services.get(m.group(1))
            if target is None:
                err(f, f"{a}: no Service {m.group(1)}")
                continue
            tspec = target[1]["spec"]
            if tspec.get("clusterIP") != "None":
                err(target[0], f"{m.group(1)} is called by name but is not headless")
            if int(m.group(2)) not in [p["port"] for p in tspec["ports"]]:
                err(target[0], f"{m.group(1)} has no port {m.group(2)}")

for name, (f, svc) in services.items():
    if name not in deployments:
        err(f, f"Service {name} has no Deployment")
        continue
    labels = deployments[name][1]["spec"]["template"]["metadata"]["labels"]
    if svc["spec"]["selector"].items() - labels.items():
        err(f, f"Service {name} does not select its pods")
    names = {p["name"] for c in deployments[name][1]["spec"]["template"]["spec"]["containers"]
             for p in c.get("ports", [])}
    for p in svc["spec"]["ports"]:
        if p["targetPort"] not in names:
            err(f, f"Service port {p['name']} targets {p['targetPort']}, which the pods lack")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"{len(deployments)} Deployments and {len(services)} Services agree with the services' flags")
