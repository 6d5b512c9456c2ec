#!/usr/bin/env python3
"""Checks of deploy/ that no schema makes: that compose.yaml (interpolated
as compose does, merge keys resolved) and the Kubernetes manifests agree
with each other, with haproxy.cfg and with the relay's settings. Run by
deploy/validate.sh (after the schema validators); needs PyYAML.

    python3 deploy/validate.py          # exit 1 and a list on any problem
"""

import re
import sys
from pathlib import Path
from urllib.parse import urlparse

import yaml

HERE = Path(__file__).resolve().parent
problems = []


def check(cond, what):
    if not cond:
        problems.append(what)


def interpolate(value, env):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}; $$ is a $."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m):
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        val = env.get(name)
        if op in (":-", "-"):
            unset = val is None or (op == ":-" and val == "")
            return arg if unset else val
        if op in (":?", "?"):
            if val is None or (op == ":?" and val == ""):
                raise KeyError(f"{name}: {arg}")
            return val
        return val or ""

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", one, value)


def duration_secs(s):
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(s))
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)] if m else None


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def compose():
    raw = yaml.safe_load((HERE / "compose.yaml").read_text())
    try:
        interpolate(raw, {})
        check(False, "compose: starts without TANDEM_REDIS_PASSWORD")
    except KeyError:
        pass
    env = {"TANDEM_REDIS_PASSWORD": "0123abcd", "TANDEM_PUBLIC_NAME": "relay.example.com"}
    doc = interpolate(raw, env)
    services = doc["services"]
    relays = {k: v for k, v in services.items() if k.startswith("relay")}
    check(len(relays) == 3, f"compose: {len(relays)} relay services, not 3")
    lb = services["haproxy"]
    lb_env = lb["environment"]
    lb_ip = lb["networks"]["tandem"]["ipv4_address"]
    node_ids, names = set(), set()
    for name, svc in relays.items():
        e = svc["environment"]
        check(e.get("TANDEM_RELAY_STORE") == "redis", f"compose: {name} is not on the redis store")
        url = urlparse(e.get("TANDEM_RELAY_REDIS_URL", ""))
        check(url.scheme == "redis" and url.hostname == "redis" and url.port == 6379,
              f"compose: {name}'s Redis URL does not name the redis service")
        check(url.password == env["TANDEM_REDIS_PASSWORD"], f"compose: {name} lacks the Redis password")
        check(e.get("TANDEM_RELAY_TLS") == "off", f"compose: {name} should leave TLS to haproxy")
        check(lb_ip in e.get("TANDEM_RELAY_TRUSTED_PROXIES", ""), f"compose: {name} does not trust haproxy")
        check(e.get("TANDEM_RELAY_TRUSTED_PROXY_HEADER") == "proxy-protocol",
              f"compose: {name}: haproxy sends PROXY v2 (send-proxy-v2)")
        node_ids.add(e.get("TANDEM_RELAY_NODE_ID"))
        names.add(e.get("TANDEM_RELAY_NAMES"))
        listen = port_of(e["TANDEM_RELAY_LISTEN"])
        check(f"{name}:{listen}" in lb_env.values(), f"compose: haproxy does not route to {name}:{listen}")
        grace = duration_secs(svc.get("stop_grace_period"))
        drain = int(e.get("TANDEM_RELAY_DRAIN_TIMEOUT_SECS", 5))
        check(grace and grace > 2 * drain, f"compose: {name} stop_grace_period not above 2 x drain")
        check(svc["depends_on"]["redis"]["condition"] == "service_healthy",
              f"compose: {name} does not wait for a healthy Redis")
        check(any(v.endswith(":/var/lib/tandem-relay") for v in svc.get("volumes", [])),
              f"compose: {name} has no data volume")
    check(len(node_ids) == 3 and None not in node_ids, "compose: node ids not distinct")
    check(names == {"relay.example.com"}, f"compose: relays disagree on names: {names}")
    check(any(v.startswith("./haproxy/haproxy.cfg:") for v in lb["volumes"]), "compose: haproxy.cfg not mounted")
    for var in ("TANDEM_LB_BIND", "TANDEM_LB_TLS_BIND", "TANDEM_LB_TLS_CERT", "TANDEM_LB_RESOLVE"):
        check(var in lb_env, f"compose: haproxy lacks {var}")
    cert = lb_env["TANDEM_LB_TLS_CERT"]
    check(any(v.split(":")[1] == cert for v in lb["volumes"]), "compose: the certificate is not mounted where haproxy reads it")
    tls_port = port_of(lb_env["TANDEM_LB_TLS_BIND"])
    check(any(str(p).endswith(f":{tls_port}") for p in lb["ports"]), "compose: the TLS port is not published")
    redis = services["redis"]
    check("./redis/redis.conf:/usr/local/etc/redis/redis.conf:ro" in redis["volumes"], "compose: redis.conf not mounted")
    check(any(v.endswith(":/data") for v in redis["volumes"]), "compose: Redis has no data volume")
    check("healthcheck" in redis and "healthcheck" in lb, "compose: healthchecks missing")
    cfg = (HERE / "haproxy" / "haproxy.cfg").read_text()
    for var in lb_env:
        check(f"${{{var}}}" in cfg or f"defined({var})" in cfg, f"compose: haproxy.cfg does not read {var}")


def k8s():
    docs = []
    for f in sorted((HERE / "k8s").glob("*.yaml")):
        if f.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    dep = by[("Deployment", "tandem-relay")]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    ann = spec["template"]["metadata"]["annotations"]
    c = pod["containers"][0]
    cm = by[("ConfigMap", "tandem-relay")]["data"]
    check(spec["replicas"] == 3, "k8s: replicas not 3")
    drain = int(cm.get("TANDEM_RELAY_DRAIN_TIMEOUT_SECS", 5))
    check(pod["terminationGracePeriodSeconds"] > 2 * drain, "k8s: grace period not above 2 x drain")
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "k8s: readiness is not /readyz")
    check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "k8s: liveness is not /healthz")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports["http"] == port_of(cm["TANDEM_RELAY_LISTEN"]), "k8s: http port is not the listen port")
    check(ports["metrics"] == port_of(cm["TANDEM_RELAY_METRICS_LISTEN"]), "k8s: metrics port mismatch")
    check(ann.get("prometheus.io/scrape") == "true" and int(ann["prometheus.io/port"]) == ports["metrics"],
          "k8s: scrape annotations do not name the metrics port")
    sc, psc = c["securityContext"], pod["securityContext"]
    check(psc["runAsNonRoot"] and psc["runAsUser"] != 0, "k8s: relay may run as root")
    check(sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], "k8s: relay privileges")
    check(cm["TANDEM_RELAY_STORE"] == "redis", "k8s: relays not on redis")
    env = {e["name"]: e for e in c["env"]}
    url = env["TANDEM_RELAY_REDIS_URL"]["value"]
    check(list(env).index("REDIS_PASSWORD") < list(env).index("TANDEM_RELAY_REDIS_URL"),
          "k8s: REDIS_PASSWORD must come before the URL that expands it")
    redis_svc = by[("Service", "redis")]
    check(urlparse(url).hostname.split(".")[0] == redis_svc["metadata"]["name"], "k8s: Redis URL does not name the redis Service")
    for kind in ("Service", "PodDisruptionBudget"):
        sel = by[(kind, "tandem-relay")]["spec"]["selector"]
        sel = sel.get("matchLabels", sel)
        check(all(labels.get(k) == v for k, v in sel.items()), f"k8s: {kind} selector misses the pods")
    hpa = by[("HorizontalPodAutoscaler", "tandem-relay")]["spec"]
    check(hpa["scaleTargetRef"]["name"] == "tandem-relay" and hpa["minReplicas"] >= 3, "k8s: HPA target or minimum")
    redis_cm = by[("ConfigMap", "tandem-redis")]["data"]["redis.conf"]
    check(redis_cm.strip() == (HERE / "redis" / "redis.conf").read_text().strip(),
          "k8s: the redis.conf in redis.yaml differs from deploy/redis/redis.conf")
    sts = by[("StatefulSet", "redis")]["spec"]
    check(sts["volumeClaimTemplates"][0]["metadata"]["name"] in
          [m["name"] for m in sts["template"]["spec"]["containers"][0]["volumeMounts"]], "k8s: Redis PVC not mounted")


def redis_conf():
    conf = {}
    for line in (HERE / "redis" / "redis.conf").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, val = line.partition(" ")
            conf[key] = val
    for key, want in (("appendonly", "yes"), ("appendfsync", "everysec"), ("maxmemory-policy", "noeviction")):
        check(conf.get(key) == want, f"redis.conf: {key} is {conf.get(key)!r}, not {want!r}")


compose()
k8s()
redis_conf()
for p in problems:
    print("problem:", p)
print(f"validate.py: {'ok' if not problems else f'{len(problems)} problems'}")
sys.exit(1 if problems else 0)
