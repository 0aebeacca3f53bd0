"""Day-2 playbooks on the lab's running stack: exec.yml (a one-off command in a
service, in a fresh container or a running replica) and logs.yml (one service's
logs from every app host as one timeline). Both change nothing else."""
import json
import os
import subprocess

from conftest import ROOT
from ansible_collections.keelson.stack.plugins.module_utils.service_logs import stamp_key

PRINT_VERSION = '-c "import os; print(\'version\', os.environ[\'DEMO_VERSION\'])"'


def playbook(name, **extra):
    """ansible-playbook on the lab with the json callback: (returncode, every task's per-host results, output)."""
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json")
    res = subprocess.run(["ansible-playbook", "-i", "inventories/lab", "playbooks/" + name, "-e", json.dumps(extra)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    try:  # the report is one JSON document; profile_tasks writes its lines around it
        report = json.JSONDecoder().raw_decode(res.stdout[res.stdout.index("{\n"):])[0]
    except ValueError:
        raise AssertionError(res.stdout[-3000:] + res.stderr[-3000:])
    tasks = [(task["task"]["name"], task["hosts"]) for play in report["plays"] for task in play["tasks"]]
    return res.returncode, tasks, report


def results(tasks, name):
    """The per-host results of the tasks called `name` (a role's tasks are named "role : name")."""
    return [hosts for task, hosts in tasks if task.split(" : ")[-1] == name]


def containers(host, service):
    """Every container (stopped ones too) of `service` on the lab's `host`."""
    return subprocess.run(["docker", "exec", "keelson-lab-" + host, "docker", "ps", "-aq", "--filter",
                           "label=keelson.stack.service=" + service], capture_output=True, text=True,
                          check=True).stdout.split()


def test_exec_in_a_fresh_container_runs_the_release_that_runs_and_leaves_nothing_behind():
    before = containers("app1", "api")
    rc, tasks, report = playbook("exec.yml", compose_stack_exec_service="api",
                                 compose_stack_exec_entrypoint="/usr/bin/python3",
                                 compose_stack_exec_command=PRINT_VERSION)
    assert rc == 0, json.dumps(report)[-3000:]
    fresh = results(tasks, "Run the command in a fresh container of the running release")[0]
    assert sorted(fresh) == ["app1", "app2"] and fresh["app2"].get("skipped"), fresh  # one host: app1
    running_rc, running_tasks, report = playbook("exec.yml", compose_stack_exec_service="api",
                                                 compose_stack_exec_in="running", compose_stack_exec_command=
                                                 "/usr/bin/python3 " + PRINT_VERSION)
    assert running_rc == 0, json.dumps(report)[-3000:]
    running = results(running_tasks, "Run the command in the service's first replica")[0]
    assert fresh["app1"]["stdout"].startswith("version ") and fresh["app1"]["stdout"] == running["app1"]["stdout"]
    assert containers("app1", "api") == before


def test_exec_fails_with_the_commands_exit_code_and_shows_its_output():
    rc, tasks, report = playbook("exec.yml", compose_stack_exec_service="worker", compose_stack_exec_host="app2",
                                 compose_stack_exec_command="no-such-command")
    assert rc != 0
    shown = results(tasks, "Show the command's output")[0]["app2"]["msg"]
    assert shown[0] == "no-such-command in worker (fresh) on app2: exit 2", shown
    assert shown[1] == "stderr:" and shown[2].startswith("keelson demo application"), shown  # its usage
    failed = results(tasks, "Fail with the command's exit code")[0]["app2"]
    assert failed["msg"] == "no-such-command exited 2 in worker on app2"


def test_exec_refuses_a_service_or_host_before_running_anything():
    for extra, message in (
            ({"compose_stack_exec_service": "apii"}, "service 'apii' is not in compose_stack_services (there: "),
            ({"compose_stack_exec_service": "scheduler", "compose_stack_exec_host": "app2"},
             "service 'scheduler' does not run on app2 (it runs on: app1)")):
        rc, tasks, report = playbook("exec.yml", compose_stack_exec_command="true", **extra)
        assert rc != 0 and message in json.dumps(report), json.dumps(report)[-3000:]
        assert not [t for t, hosts in tasks if t.startswith("Run the command") and
                    any(not h.get("skipped") for h in hosts.values())]
    rc, tasks, report = playbook("exec.yml", compose_stack_exec_command="true")
    assert rc != 0 and "missing required arguments: compose_stack_exec_service" in json.dumps(report)


def test_logs_merge_every_replica_of_every_host_in_time_order():
    rc, tasks, report = playbook("logs.yml", compose_stack_logs_service="api", compose_stack_logs_lines=400)
    assert rc == 0, json.dumps(report)[-3000:]
    shown = results(tasks, "Show the logs, oldest first")[0]
    lines = list(shown.values())[0]["msg"]
    assert 0 < len(lines) <= 400
    assert set(line.split(" ", 1)[0] for line in lines) == {"app1/api-1", "app1/api-2", "app2/api-1", "app2/api-2"}
    stamps = [stamp_key(line.split(" ", 1)[1]) for line in lines]
    stamps = [s for s in stamps if s]
    assert stamps == sorted(stamps) and len(stamps) > len(lines) / 2
    rc, tasks, report = playbook("logs.yml", compose_stack_logs_service="api", compose_stack_logs_lines=3,
                                 compose_stack_logs_since="24h")
    assert rc == 0, json.dumps(report)[-3000:]
    assert len(list(results(tasks, "Show the logs, oldest first")[0].values())[0]["msg"]) == 3
    rc, tasks, report = playbook("logs.yml", compose_stack_logs_service="scheduler")
    assert rc == 0, json.dumps(report)[-3000:]
    lines = list(results(tasks, "Show the logs, oldest first")[0].values())[0]["msg"]
    assert lines and all(line.startswith("app1/scheduler ") for line in lines), lines  # placed on one host


def test_logs_refuse_a_bound_docker_would_not_take():
    rc, tasks, report = playbook("logs.yml", compose_stack_logs_service="api", compose_stack_logs_since="yesterday")
    assert rc != 0
    assert "compose_stack_logs_since: 'yesterday' is not a duration" in json.dumps(report)
    assert not results(tasks, "Read each container's logs")
