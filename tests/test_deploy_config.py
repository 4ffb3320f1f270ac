"""The deployment files agree with the code and the README: docker-compose.yml's services,
images and variables, the Kubernetes objects' settings, image, user and time budgets, and the
runbook links of the alerts. (The ecosystems' own validators run in .ci/check-deploy.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from chatsvc.config import Config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# Read by gunicorn.conf.py rather than by chatsvc's Config; the README documents them too.
GUNICORN = {
    "HOST", "PORT", "WEB_CONCURRENCY", "WORKER_CONNECTIONS", "GUNICORN_TIMEOUT",
    "GUNICORN_GRACEFUL_TIMEOUT", "FORWARDED_ALLOW_IPS", "PROMETHEUS_MULTIPROC_DIR",
}  # fmt: skip


def known_setting(name: str) -> bool:
    return hasattr(Config, name) or name in GUNICORN


def k8s() -> dict[str, dict]:
    objects = {}
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            objects[document["kind"]] = document
    return objects


APIS = ("api1", "api2")  # two replicas, as two hosts


def test_compose_runs_migrations_then_two_api_replicas_behind_nginx():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"db", "redis", "migrate", *APIS, "proxy"}
    assert services["migrate"]["command"] == ["flask", "--app", "chatsvc", "db", "upgrade"]
    for api in APIS:
        assert services["migrate"]["build"] == services[api]["build"] == "."
        assert services[api]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
        assert services[api]["environment"] == services[APIS[0]]["environment"]
        assert "ports" not in services[api], "only the proxy is published"
    assert services["db"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    assert services["proxy"]["image"].startswith("nginx:")
    assert set(services["proxy"]["depends_on"]) == set(APIS)
    # nginx gets the committed config, which balances the api replicas on the image's PORT.
    source, target, _ = services["proxy"]["volumes"][0].split(":")
    assert (ROOT / source).resolve() == ROOT / "deploy" / "nginx" / "chatsvc.conf"
    assert target.startswith("/etc/nginx/conf.d/")
    conf = (ROOT / source).read_text()
    upstream = re.search(r"upstream chatsvc \{(.*?)\}", conf, re.S).group(1)
    assert re.findall(r"server (\S+):8000;", upstream) == list(APIS)
    # each again as a backup nginx never takes out: a worker killed on each host within
    # fail_timeout leaves these, not a 503 for everything (soak task; deploy/nginx comment)
    assert re.findall(r"server (\S+):8000 backup max_fails=0;", upstream) == list(APIS)
    assert "PORT=8000" in (ROOT / "Dockerfile").read_text()
    listen = re.search(r"listen (\d+);", conf).group(1)
    assert services["proxy"]["ports"] == [f"127.0.0.1:8080:{listen}"]


def test_compose_variables_are_settings_the_readme_documents():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    environment = compose["services"]["api1"]["environment"]
    assert environment == compose["services"]["migrate"]["environment"]
    for name in environment:
        assert known_setting(name), f"compose sets {name}, which nothing reads"
        assert f"`{name}`" in README, f"README does not document {name}"
    assert environment["PROXY_FIX_X_FOR"] == 1  # nginx in front
    assert environment["JWT_SECRET"].startswith("${JWT_SECRET:?")  # refuses to start without
    assert "docker compose up" in README


def test_k8s_config_and_secret_hold_settings_the_readme_documents():
    objects = k8s()
    keys = {**objects["ConfigMap"]["data"], **objects["Secret"]["stringData"]}
    for name in keys:
        assert known_setting(name), f"deploy/k8s sets {name}, which nothing reads"
        assert f"`{name}`" in README, f"README does not document {name}"
    assert {"JWT_SECRET", "DATABASE_URL"} <= set(objects["Secret"]["stringData"])
    assert not {"JWT_SECRET", "DATABASE_URL", "OPENAI_API_KEY"} & set(objects["ConfigMap"]["data"])


def test_k8s_pods_run_the_image_as_its_non_root_user_with_a_read_only_root():
    objects = k8s()
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    pods = {
        "Deployment": objects["Deployment"]["spec"]["template"]["spec"],
        "Job": objects["Job"]["spec"]["template"]["spec"],
        "CronJob": objects["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"],
    }
    images = set()
    for kind, pod in pods.items():
        assert pod["securityContext"]["runAsNonRoot"] is True, kind
        assert str(pod["securityContext"]["runAsUser"]) == user.group(1), kind
        for container in pod["containers"]:
            images.add(container["image"])
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, kind
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, kind
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volume = next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"])
            assert "emptyDir" in volume, f"{kind}: /tmp must be writable"
    assert len(images) == 1, images
    job = pods["Job"]["containers"][0]["command"]
    cron = pods["CronJob"]["containers"][0]["command"]
    assert job == ["flask", "--app", "chatsvc", "db", "upgrade"]
    assert cron == ["flask", "--app", "chatsvc", "sessions", "cleanup"]


def test_k8s_probes_and_a_drain_longer_than_the_longest_turn():
    objects = k8s()
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    settings = objects["ConfigMap"]["data"]
    agent = float(settings["AGENT_TIMEOUT_SECONDS"])
    graceful = float(settings["GUNICORN_GRACEFUL_TIMEOUT"])
    assert agent < graceful < pod["terminationGracePeriodSeconds"]
    selector = objects["Deployment"]["spec"]["selector"]["matchLabels"]
    assert objects["Service"]["spec"]["selector"] == selector
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    assert objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == "chatsvc"
    assert objects["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"].items() <= (
        selector.items()
    )


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return found


def test_every_alert_links_to_its_section_of_the_runbook():
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    runbook = anchors((ROOT / "docs" / "runbook.md").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 8
    for rule in alerts:
        url = rule["annotations"]["runbook_url"]
        assert url.endswith("runbook.md#" + rule["alert"].lower()), url
        assert rule["alert"].lower() in runbook, f"docs/runbook.md has no section {rule['alert']}"
