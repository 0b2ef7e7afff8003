"""Resize on exec, end to end: real test pods (cgroups, processes), the real exporter process
with bpf/resize.bpf.c loaded, the real kubernetes client, and the test API server recording
every PATCH with its arrival time.

The commands are copies of /bin/sleep under names nothing else on the machine uses, started
in the pod's container cgroup by `sh -c 'echo $$ > cgroup.procs && exec "$@"' ... ip netns
exec NETNS <command>`; the kernel names the process after the file (its comm).

"Nothing happened" is never a sleep: the later matching exec of a fence pod must produce its
PATCH, and the ring buffer and the actuator handle events in order, so every earlier exec
has been handled by then.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from exporter import names
from exporter.testapiserver import KubeApiServer
from conftest import run_exporter
from test_exec import BPF_PROG_TYPE_RAW_TRACEPOINT, prog_types
from test_network import wait_for

NODE = "node-a"
NAMESPACE = "dev"
ACTIONS = names.RESIZE_ACTIONS + "_total"
ERRORS = names.RESIZE_ANNOTATION_ERRORS + "_total"
LATENCY = names.RESIZE_TRIGGER_LATENCY
UP = {"requests": {"cpu": "2", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "256Mi"}}
DOWN = {"requests": {"cpu": "250m", "memory": "64Mi"},
        "limits": {"cpu": "500m", "memory": "128Mi"}}
ORIGINAL = {"requests": {"cpu": "100m", "memory": "32Mi"},
            "limits": {"cpu": "200m", "memory": "64Mi"}}
HOLD = 0.5
# How long the matched command runs: the resize up must reach the API server before it can
# have ended (a relative order; the latency itself is printed, and bench/ is where figures
# are kept: a wall-clock threshold here would fail on a busy machine).
COMMAND_SECONDS = 2.0
# Only what the resize tests need (the other programs are tested elsewhere; fewer compiles).
LEAN = ("--syscalls", "off", "--tcp", "off", "--drops", "off", "--exec", "off", "--peers", "off")


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> dict[str, str]:
    """comm -> path of a copy of /bin/sleep by that name."""
    d = tmp_path_factory.mktemp("resize")
    out = {}
    for name in ("psmake", "pscc", "psother", "podsnoop-compiler-daemon"):
        shutil.copy("/bin/sleep", d / name)
        os.chmod(d / name, 0o755)
        out[name] = str(d / name)
    return out


@pytest.fixture(scope="module")
def api():
    with KubeApiServer() as server:
        yield server


def annotation(container="build", commands=("psmake", "pscc"), up=UP, down=DOWN, hold=HOLD,
               **extra) -> str:
    doc = {"container": container, "commands": list(commands), "up": up}
    if down is not None:
        doc["down"] = down
    if hold is not None:
        doc["holdSeconds"] = hold
    return json.dumps({**doc, **extra})


def publish(api, pod, text: str | None, resources=None):
    annotations = {names.RESIZE_ANNOTATION: text} if text is not None else {}
    return api.add_pod(pod.name, NAMESPACE, NODE, uid=pod.uid,
                       containers={c.name: c.id for c in pod.containers.values()},
                       annotations=annotations,
                       resources={"build": resources} if resources else None)


def exporter_for(pods, api, *flags):
    return run_exporter(pods, "--kube", "auto", "--kubeconfig", api.kubeconfig_path,
                        "--node-name", NODE, "--resize-min-interval", "0", *LEAN, *flags)


@pytest.fixture(scope="module")
def exporter(factory, api):
    proc = exporter_for(factory, api, "--resize", "on")
    yield proc
    code = proc.stop()
    assert code == 0, proc.output()


def patches(api, pod_name: str | None = None):
    """The PATCHes the server has answered (a logged request gets its body, then its
    status, while the handler runs)."""
    return [r for r in api.request_log if r.method == "PATCH" and r.status is not None
            and (pod_name is None or r.path.split("/pods/")[1].split("/")[0] == pod_name)]


def body(resources) -> dict:
    return {"spec": {"containers": [{"name": "build", "resources": resources}]}}


def armed_pod(factory, api, exporter, text=None, resources=None):
    pod = factory.create(containers=("build",))
    publish(api, pod, annotation() if text is None else text, resources)
    wait_for(lambda: exporter.metrics().value(names.RESIZE_ARMED, pod=pod.name) == 1,
             what=f"{pod.name} to be armed")
    return pod


def resize_path(pod) -> str:
    return f"/api/v1/namespaces/{NAMESPACE}/pods/{pod.name}/resize"


def test_matching_exec_resizes_up_once_while_it_runs_and_back_down_after_hold(
        factory, api, exporter, commands):
    pod = armed_pod(factory, api, exporter)
    t0 = time.monotonic()
    proc = pod.run([commands["psmake"], str(COMMAND_SECONDS)], container="build")
    wait_for(lambda: patches(api, pod.name), timeout=5, interval=0.002, what="the PATCH")
    (up,) = patches(api, pod.name)
    latency = up.time - t0
    print(f"\nexec -> PATCH at the API server: {latency * 1e3:.1f} ms "
          "(from before the launcher's fork; an upper bound)")
    # t0 is before the fork, so the command ends after t0 + COMMAND_SECONDS
    assert latency < COMMAND_SECONDS, f"PATCH {latency * 1e3:.1f} ms after the exec"
    assert up.path == resize_path(pod) and up.status == 200
    assert up.content_type == "application/strategic-merge-patch+json"
    assert up.body == body(UP)
    proc.wait(10)
    exited = time.monotonic()
    wait_for(lambda: len(patches(api, pod.name)) == 2, timeout=10, what="the resize down")
    up2, down = patches(api, pod.name)
    assert up2 is up and down.body == body(DOWN) and down.path == resize_path(pod)
    assert down.time - exited >= HOLD - 0.1, "down before the hold time passed"
    m = exporter.metrics()
    assert m.value(ACTIONS, namespace=NAMESPACE, pod=pod.name, container="build",
                   direction="up", result="applied") == 1
    assert m.value(ACTIONS, pod=pod.name, direction="down", result="applied") == 1
    kernel_latency = m.value(LATENCY + "_sum")
    print(f"kernel exec -> PATCH sent (exporter's histogram): {kernel_latency * 1e3:.2f} ms")
    # the exporter's own exec -> PATCH sent lies within the test's fork -> PATCH received
    assert m.value(LATENCY + "_count") == 1 and 0 < kernel_latency <= latency
    assert m.value(names.RESIZE_STATUS, pod=pod.name, status="done") == 1
    spec = api.pod(pod.uid)["spec"]["containers"][0]["resources"]
    assert spec == DOWN
    assert len(patches(api, pod.name)) == 2


def test_no_patch_for_other_commands_or_pods_without_the_annotation(
        factory, api, exporter, commands):
    annotated = armed_pod(factory, api, exporter, annotation(hold=60))
    plain = factory.create(containers=("build",))
    publish(api, plain, None)
    wait_for(lambda: exporter.metrics().series(names.POD_INFO, pod=plain.name),
             what="the plain pod in the index")
    annotated.exec([commands["psother"], "0"], container="build")
    annotated.exec(["true"], container="build")
    plain.exec([commands["psmake"], "0"], container="build")
    plain.exec([commands["pscc"], "0"], container="build")
    assert exporter.metrics().value(names.RESIZE_ARMED, pod=plain.name) == 0
    # Fence: a matching exec in the annotated pod is answered, and it is the only PATCH.
    annotated.exec([commands["pscc"], "0"], container="build")
    wait_for(lambda: patches(api, annotated.name), timeout=5, what="the fence PATCH")
    assert not patches(api, plain.name)
    assert [r.body for r in patches(api, annotated.name)] == [body(UP)]
    assert not [r for r in api.request_log if f"/pods/{plain.name}" in r.path]


def test_a_burst_of_matching_processes_is_one_resize_up_and_one_down(
        factory, api, exporter, commands):
    pod = armed_pod(factory, api, exporter)
    burst = pod.run(["sh", "-c", f"for i in $(seq 100); do {commands['pscc']} 1 & done; wait"],
                    container="build")
    wait_for(lambda: exporter.metrics().value(names.RESIZE_MATCHED_PROCESSES,
                                              pod=pod.name) >= 50,
             timeout=5, what="the burst's processes to be tracked")
    assert len(patches(api, pod.name)) == 1
    burst.wait(30)
    ended = time.monotonic()
    wait_for(lambda: len(patches(api, pod.name)) == 2, timeout=10, what="the resize down")
    up, down = patches(api, pod.name)
    assert up.body == body(UP) and down.body == body(DOWN)
    assert down.time - ended >= HOLD - 0.1, "down before the last process + hold"
    m = exporter.metrics()
    assert m.value(names.RESIZE_MATCHED_PROCESSES, pod=pod.name) == 0
    assert m.value(ACTIONS, pod=pod.name) == 2


def test_without_down_the_container_returns_to_its_resources_before(
        factory, api, exporter, commands):
    pod = armed_pod(factory, api, exporter, annotation(down=None), resources=ORIGINAL)
    proc = pod.run([commands["psmake"], "0.2"], container="build")
    proc.wait(10)
    wait_for(lambda: len(patches(api, pod.name)) == 2, timeout=10, what="up and down")
    up, down = patches(api, pod.name)
    assert up.body == body(UP)
    assert down.body == body(ORIGINAL)
    assert api.pod(pod.uid)["spec"]["containers"][0]["resources"] == ORIGINAL


BAD = {
    "invalid_json": ('{"container": "build", "commands": ["psmake"', "not JSON"),
    "unknown_container": (annotation(container="compiler"),
                          "the pod has no container 'compiler' (containers: build)"),
    "invalid_quantity": (annotation(up={"requests": {"cpu": "lots"}}),
                         "'lots' is not a Kubernetes quantity"),
    "comm_too_long": (annotation(commands=["podsnoop-compiler-daemon"]),
                      "so write 'podsnoop-compil'"),
    "missing_field": (json.dumps({"container": "build", "commands": ["psmake"]}),
                      "missing field(s) 'up'"),
    "unknown_field": (annotation(upp=UP), "unknown field(s) 'upp'"),
}


def test_invalid_annotations_are_rejected_clearly_counted_and_never_resize(
        factory, api, exporter, commands):
    bad = {}
    for reason, (text, _) in BAD.items():
        pod = factory.create(containers=("build",))
        publish(api, pod, text)
        bad[reason] = pod
    for reason, pod in bad.items():
        wait_for(lambda: exporter.metrics().value(ERRORS, namespace=NAMESPACE, pod=pod.name,
                                                  reason=reason) == 1,
                 what=f"the {reason} error")
    out = exporter.output()
    for reason, (_, message) in BAD.items():
        line = next((ln for ln in out.splitlines() if f"{NAMESPACE}/{bad[reason].name} " in ln),
                    None)
        assert line and "rejected" in line and f"({reason})" in line and message in line, \
            (reason, line)
    assert "Traceback" not in out
    for reason, pod in bad.items():
        name = "podsnoop-compiler-daemon" if reason == "comm_too_long" else "psmake"
        pod.exec([commands[name], "0"], container="build")
    m = exporter.metrics()
    assert not any(m.value(names.RESIZE_ARMED, pod=p.name) for p in bad.values())
    fence = armed_pod(factory, api, exporter, annotation(hold=60))
    fence.exec([commands["psmake"], "0"], container="build")
    wait_for(lambda: patches(api, fence.name), timeout=5, what="the fence PATCH")
    assert not any(patches(api, p.name) for p in bad.values())
    # Counted once per distinct annotation, not once per sync.
    assert all(exporter.metrics().value(ERRORS, pod=p.name) == 1 for p in bad.values())


def test_status_is_read_back_from_the_pod(factory, api, exporter, commands):
    api.resize_outcome = "Infeasible"
    try:
        pod = armed_pod(factory, api, exporter, annotation(hold=60))
        pod.exec([commands["psmake"], "0"], container="build")
        wait_for(lambda: exporter.metrics().value(names.RESIZE_STATUS, pod=pod.name,
                                                  status="infeasible") == 1,
                 timeout=5, what="status infeasible")
    finally:
        api.resize_outcome = None
    assert exporter.metrics().value(ACTIONS, pod=pod.name, direction="up",
                                    result="applied") == 1
    assert "is infeasible by the kubelet" in exporter.output()


def test_a_failed_resize_is_counted_and_the_next_exec_tries_again(
        factory, api, exporter, commands):
    pod = armed_pod(factory, api, exporter, annotation(hold=60))
    api.fail_next(403)
    pod.exec([commands["psmake"], "0"], container="build")
    wait_for(lambda: exporter.metrics().value(ACTIONS, pod=pod.name, direction="up",
                                              result="failed") == 1,
             timeout=5, what="the failed resize")
    assert "needs patch on pods/resize" in exporter.output()
    pod.exec([commands["psmake"], "0"], container="build")
    wait_for(lambda: exporter.metrics().value(ACTIONS, pod=pod.name, direction="up",
                                              result="applied") == 1,
             timeout=5, what="the retried resize")
    assert [r.status for r in patches(api, pod.name)] == [403, 200]


def test_no_resize_subresource_falls_back_to_patching_the_pod(pods, api, commands):
    api.resize_subresource = False
    proc = exporter_for(pods, api, "--resize", "on")
    try:
        pod = armed_pod(pods, api, proc)
        api.clear_log()
        pods_path = f"/api/v1/namespaces/{NAMESPACE}/pods/{pod.name}"
        pod.exec([commands["psmake"], "0"], container="build")
        wait_for(lambda: len(patches(api, pod.name)) == 3, timeout=10, what="up and down")
        first, fallback, down = patches(api, pod.name)
        assert (first.path, first.status) == (resize_path(pod), 404)
        assert (fallback.path, fallback.status) == (pods_path, 200)
        assert first.body == fallback.body == body(UP)
        # The 404 is remembered: the resize down goes straight to the pod.
        assert (down.path, down.status, down.body) == (pods_path, 200, body(DOWN))
        m = proc.metrics()
        assert m.value(ACTIONS, pod=pod.name, direction="up", result="applied") == 1
        assert m.value(ACTIONS, pod=pod.name, direction="down", result="applied") == 1
        assert api.pod(pod.uid)["spec"]["containers"][0]["resources"] == DOWN
        assert "no pods/resize subresource" in proc.output()
    finally:
        api.resize_subresource = True
        assert proc.stop() == 0, proc.output()


def test_dry_run_decides_and_counts_but_sends_nothing(pods, api, commands):
    proc = exporter_for(pods, api, "--resize", "dry-run")
    try:
        pod = armed_pod(pods, api, proc)
        pod.exec([commands["psmake"], "0"], container="build")
        wait_for(lambda: proc.metrics().value(ACTIONS, pod=pod.name, direction="down",
                                              result="dry_run") == 1,
                 timeout=10, what="the dry-run resize down")
        m = proc.metrics()
        assert m.value(ACTIONS, pod=pod.name, direction="up", result="dry_run") == 1
        assert m.value(ACTIONS, pod=pod.name) == 2
        assert not patches(api, pod.name)
        assert f"resize dry-run: would resize {NAMESPACE}/{pod.name} container build up" \
            in proc.output()
    finally:
        assert proc.stop() == 0, proc.output()


def test_resize_off_loads_no_program(pods, api):
    proc = exporter_for(pods, api)   # --resize defaults to off
    try:
        assert BPF_PROG_TYPE_RAW_TRACEPOINT not in prog_types(proc.proc.pid)
        m = proc.metrics()
        assert not [s for s in m.samples if s.startswith("podsnoop_resize")]
        assert not m.series(names.SCRAPE_COLLECTOR_SUCCESS, collector="resize")
    finally:
        assert proc.stop() == 0
    proc = exporter_for(pods, api, "--resize", "on")
    try:
        assert prog_types(proc.proc.pid).count(BPF_PROG_TYPE_RAW_TRACEPOINT) == 2
        assert proc.metrics().value(names.SCRAPE_COLLECTOR_SUCCESS, collector="resize") == 1
    finally:
        assert proc.stop() == 0


def test_resize_without_the_kubernetes_api_is_a_clear_error(pods):
    from test_cli import assert_clean_failure, podsnoop
    r = podsnoop("--kube", "off", "--resize", "on", "--listen", "127.0.0.1:0",
                 "--interfaces", "none", *LEAN)
    assert_clean_failure(r, 1, "--resize on needs the Kubernetes API", "podsnoop: fix:")


def test_deploy_component_and_example_pod(tmp_path):
    """deploy/resize builds onto the base (RBAC for pods/resize, the flag on), and the
    example kube-build pod's annotation is accepted by the exporter's own parser."""
    import yaml

    from exporter import config
    from exporter.resize import annotation as parser
    from test_deploy import DEPLOY, deserialize, kustomize, load
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY, overlay)],
        "components": [os.path.relpath(DEPLOY / "resize", overlay)]}))
    docs = kustomize(overlay)
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    role = by_name[("ClusterRole", "podsnoop-resize")]
    assert {(r["resources"][0], tuple(r["verbs"])) for r in role["rules"]} == {
        ("pods/resize", ("patch",)), ("pods", ("patch",))}
    binding = by_name[("ClusterRoleBinding", "podsnoop-resize")]
    sa = by_name[("ServiceAccount", "podsnoop")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "podsnoop",
                                    "namespace": sa["metadata"]["namespace"]}]
    assert binding["roleRef"]["name"] == "podsnoop-resize"
    for doc in (role, binding, by_name[("DaemonSet", "podsnoop")]):
        deserialize(doc)
    ctr = by_name[("DaemonSet", "podsnoop")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    assert "NODE_NAME" in env, "the component must add to the base's env, not replace it"
    old = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("PODSNOOP_")}
    try:
        os.environ.update({k: v for k, v in env.items() if k.startswith("PODSNOOP_") and v})
        assert config.parse(ctr["args"]).resize == "on"
    finally:
        for k in [k for k in os.environ if k.startswith("PODSNOOP_")]:
            del os.environ[k]
        os.environ.update(old)
    (build,) = load(DEPLOY / "resize" / "kube-build.yaml")
    deserialize(build)
    pod = build["spec"]["template"]
    rule = parser.parse(pod["metadata"]["annotations"][names.RESIZE_ANNOTATION],
                        {c["name"] for c in pod["spec"]["containers"]})
    assert rule.container == "build" and "make" in rule.commands
    spec = pod["spec"]["containers"][0]["resources"]
    assert rule.down == spec, "down is what the pod starts with"
