#!/usr/bin/env python3
"""Check the files under deploy/ and the metric and runbook docs.

Usage: scripts/check-deploy.py [--require-tools]

Checks, each printed as it passes:

1. promtool check rules and promtool test rules on deploy/prometheus, and
   promtool check config on the compose stack's prometheus.yml.
2. deploy/compose.yaml parses, has every service of the stack, and every
   file, build target and dependency it names exists. The notifiers' stop
   grace period is longer than their drain timeout.
3. The kustomize base and the keda overlay render (with `kustomize build` or
   `kubectl kustomize`), and the rendered objects have the probes, the PDB,
   the topic Job, the Secret references and a termination grace period above
   the drain timeout. Without a renderer, the same checks run on the resource
   files that the kustomizations list, except the label selectors, which only
   the render adds.
4. The Grafana dashboard JSON loads, and it and the alert rules use only
   metric names listed in docs/metrics.md or recorded by the rules. The docs
   list exactly the metrics that consumer/src/telemetry/metrics.rs registers.
5. Every alert has a runbook_url whose anchor is a heading of docs/runbooks.md.

Without promtool, check 1 prints "skipped" unless --require-tools is given;
tests/deploy_checks.rs passes it when TXNOTIFY_SYSTEM_TESTS=1, because
scripts/test-env.sh installs promtool.
"""

import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


class CheckFailed(Exception):
    pass


def require(condition, message):
    if not condition:
        raise CheckFailed(message)


def run(command):
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    require(
        result.returncode == 0,
        f"{' '.join(command)} failed with status {result.returncode}:\n{result.stdout}{result.stderr}",
    )
    return result.stdout


def skip_or_fail(what, require_tools):
    require(not require_tools, f"{what} is not installed; scripts/test-env.sh installs it")
    print(f"skipped: {what} is not installed")


def check_prometheus(require_tools):
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("promtool (Debian package prometheus)", require_tools)
        return
    run([promtool, "check", "rules", "deploy/prometheus/rules.yml"])
    run([promtool, "test", "rules", "deploy/prometheus/tests/rules_test.yml"])
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    config["rule_files"] = [str(DEPLOY / "prometheus/rules.yml")]
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as file:
        yaml.safe_dump(config, file)
        file.flush()
        run([promtool, "check", "config", file.name])
    print("ok: promtool check rules, test rules and check config")


def drain_timeout_ms(toml_path):
    config = tomllib.loads(toml_path.read_text())
    return config.get("notifier", {}).get("drain_timeout_ms", 20_000)


def duration_seconds(text):
    match = re.fullmatch(r"(\d+)(ms|s|m)", str(text))
    require(match is not None, f"unreadable duration {text!r}")
    value, unit = int(match.group(1)), match.group(2)
    if unit == "ms":
        return value / 1000
    if unit == "m":
        return value * 60
    return value


def check_compose():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    expected = {
        "kafka", "topics-init", "mailpit", "jaeger", "otel-collector", "prometheus",
        "grafana", "notifier-1", "notifier-2", "payment-service",
    }
    require(expected <= set(services), f"compose.yaml lacks services {sorted(expected - set(services))}")

    kafka_roles = services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    require(kafka_roles == "broker,controller", f"kafka is not in KRaft combined mode: {kafka_roles!r}")

    dockerfile = (DEPLOY / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.MULTILINE))
    for name, service in services.items():
        build = service.get("build")
        if build:
            require((DEPLOY / build["context"] / build["dockerfile"]).is_file(), f"{name}: Dockerfile missing")
            require(build.get("target") in targets, f"{name}: build target {build.get('target')!r} not in the Dockerfile")
        for dependency in service.get("depends_on", []):
            require(dependency in services, f"{name} depends on unknown service {dependency}")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                require((DEPLOY / source).exists(), f"{name}: volume source {source} missing")
            else:
                require(source in compose.get("volumes", {}), f"{name}: named volume {source} not declared")
        for config in service.get("configs", []):
            require(config["source"] in compose["configs"], f"{name}: config {config['source']} not declared")
    for name, config in compose["configs"].items():
        require((DEPLOY / config["file"]).is_file(), f"config {name}: file {config['file']} missing")

    drain = drain_timeout_ms(DEPLOY / "compose/txnotify.toml") / 1000
    for name in ("notifier-1", "notifier-2"):
        grace = duration_seconds(services[name]["stop_grace_period"])
        require(grace > drain, f"{name}: stop_grace_period {grace} s is not above the drain timeout {drain} s")
    init_command = services["topics-init"]["command"]
    require(init_command[-2:] == ["topics", "ensure"], f"topics-init runs {init_command}")
    print(f"ok: compose.yaml parses with {len(services)} services")


def render_kustomize(path):
    kustomize = shutil.which("kustomize")
    if kustomize:
        return run([kustomize, "build", str(path)])
    kubectl = shutil.which("kubectl")
    if kubectl:
        return run([kubectl, "kustomize", str(path)])
    return None


def load_unrendered(path):
    """Returns the objects of a kustomization's resource files, without transforms."""
    kustomization = yaml.safe_load((path / "kustomization.yaml").read_text())
    objects = []
    for resource in kustomization.get("resources", []):
        target = path / resource
        if target.is_dir():
            objects.extend(load_unrendered(target))
        else:
            objects.extend(item for item in yaml.safe_load_all(target.read_text()) if item)
    for generator in kustomization.get("configMapGenerator", []):
        for file in generator.get("files", []):
            require((path / file).is_file(), f"configMapGenerator file {file} missing")
        objects.append({"kind": "ConfigMap", "metadata": {"name": generator["name"]}})
    return objects


def load_kustomization(path):
    """Renders `path`, or loads its files unrendered. Returns (objects, rendered)."""
    rendered = render_kustomize(path)
    if rendered is None:
        return load_unrendered(path), False
    return [item for item in yaml.safe_load_all(rendered) if item], True


def check_kubernetes():
    base = DEPLOY / "kubernetes/base"
    objects, rendered = load_kustomization(base)
    by_kind = {}
    for item in objects:
        by_kind.setdefault(item["kind"], []).append(item)
    for kind in ("Deployment", "PodDisruptionBudget", "Job", "ConfigMap", "Service", "ServiceAccount"):
        require(kind in by_kind, f"kustomize base renders no {kind}")

    deployment = by_kind["Deployment"][0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    require(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probe is not /healthz")
    require(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probe is not /readyz")
    require("memory" in container["resources"]["limits"], "the notifier has no memory limit")
    require(pod["securityContext"]["runAsNonRoot"] is True, "the notifier may run as root")
    drain = drain_timeout_ms(base / "txnotify.toml") / 1000
    grace = pod["terminationGracePeriodSeconds"]
    require(grace > drain, f"terminationGracePeriodSeconds {grace} is not above the drain timeout {drain} s")
    secrets = {
        env["valueFrom"]["secretKeyRef"]["name"]
        for env in container["env"]
        if "secretKeyRef" in env.get("valueFrom", {})
    }
    require(secrets == {"txnotify-smtp"}, f"SMTP credentials reference secrets {secrets}")
    config_name = by_kind["ConfigMap"][0]["metadata"]["name"]
    mounted = {volume.get("configMap", {}).get("name") for volume in pod["volumes"]}
    require(config_name in mounted, f"the Deployment does not mount the generated ConfigMap {config_name}")
    if rendered:
        selector = by_kind["PodDisruptionBudget"][0]["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        require(selector.items() <= labels.items(), "the PodDisruptionBudget does not select the notifier pods")
        service_selector = by_kind["Service"][0]["spec"].get("selector", {})
        require(service_selector and service_selector.items() <= labels.items(), "the Service does not select the notifier pods")
    job_args = by_kind["Job"][0]["spec"]["template"]["spec"]["containers"][0]["args"]
    require(job_args[-2:] == ["topics", "ensure"], f"the topic Job runs {job_args}")

    keda, _ = load_kustomization(DEPLOY / "kubernetes/overlays/keda")
    scaled = [item for item in keda if item["kind"] == "ScaledObject"]
    require(len(scaled) == 1, "the keda overlay renders no ScaledObject")
    require(scaled[0]["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"], "the ScaledObject targets another Deployment")
    require(scaled[0]["spec"]["triggers"][0]["type"] == "kafka", "the ScaledObject does not scale on Kafka lag")
    how = "renders" if rendered else "has (unrendered: no kustomize or kubectl found)"
    print(f"ok: kustomize base {how} {len(objects)} objects; the keda overlay adds a ScaledObject")


def documented_metrics():
    text = (ROOT / "docs/metrics.md").read_text()
    return set(re.findall(r"^\| `(txnotify_[a-z_]+)` \|", text, re.MULTILINE))


def registered_metrics():
    source = (ROOT / "consumer/src/telemetry/metrics.rs").read_text()
    return set(re.findall(r'"(txnotify_[a-z_]+)"', source))


def base_name(name, histograms):
    for suffix in ("_bucket", "_count", "_sum"):
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name


def check_metric_names():
    documented = documented_metrics()
    registered = registered_metrics()
    require(documented == registered, f"docs/metrics.md and metrics.rs differ: only in docs {sorted(documented - registered)}, only in code {sorted(registered - documented)}")
    histograms = {name for name in documented if name.endswith("_seconds") and "histogram" in (ROOT / "docs/metrics.md").read_text().split(name, 1)[1].split("\n", 1)[0]}

    rules = yaml.safe_load((DEPLOY / "prometheus/rules.yml").read_text())
    recorded = {rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule}
    rule_exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]

    dashboard = json.loads((DEPLOY / "grafana/dashboards/txnotify.json").read_text())
    dashboard_exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    require(dashboard_exprs, "the dashboard has no queries")

    for source, exprs in (("rules.yml", rule_exprs), ("txnotify.json", dashboard_exprs)):
        for expr in exprs:
            for name in re.findall(r"\btxnotify[_:][a-z0-9_:]+", expr):
                known = base_name(name, histograms) in documented or name in recorded
                require(known, f"{source} uses {name}, which docs/metrics.md does not list and no rule records")
    print(f"ok: {len(documented)} documented metrics match the code; rules and dashboard use only them")


def anchor(heading):
    text = heading.strip().lower()
    text = re.sub(r"[^a-z0-9 _-]", "", text)
    return text.replace(" ", "-")


def check_runbooks():
    text = (ROOT / "docs/runbooks.md").read_text()
    anchors = {anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("## ")}
    rules = yaml.safe_load((DEPLOY / "prometheus/rules.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    for alert in alerts:
        url = alert["annotations"].get("runbook_url", "")
        require("docs/runbooks.md#" in url, f"{alert['alert']} has no runbook_url into docs/runbooks.md")
        fragment = url.split("#", 1)[1]
        require(fragment in anchors, f"{alert['alert']} links to #{fragment}, which is not a heading of docs/runbooks.md")
    print(f"ok: all {len(alerts)} alerts link to a runbook section")


def main():
    require_tools = "--require-tools" in sys.argv[1:]
    checks = [
        lambda: check_prometheus(require_tools),
        check_compose,
        check_kubernetes,
        check_metric_names,
        check_runbooks,
    ]
    failed = 0
    for check in checks:
        try:
            check()
        except CheckFailed as error:
            failed += 1
            print(f"FAILED: {error}")
        except (KeyError, IndexError, TypeError, OSError) as error:
            failed += 1
            print(f"FAILED: a required field is missing or has the wrong type: {error!r}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
