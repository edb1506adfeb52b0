"""deploy/terraform: formatted, valid, and planning what the runbook says.

- `terraform fmt -check -recursive` over deploy/terraform;
- `terraform init -backend=false` and `terraform validate` of every root (the production
  root, and any other directory of deploy/terraform outside modules/ with a versions.tf,
  such as bootstrap/) and of every module on its own;
- `terraform test` in every root that has tests/*.tftest.hcl: the production root's plan
  it against a mocked AWS provider (no credentials, no network) and assert the names and
  values the runbook cites (timeouts, health check, stopTimeout, secrets, security group
  rules, deployment settings, autoscaling, alarms, ECR, NAT gateways, KMS, EFS);
- (checkov is the gate of tests/deploy/test_checkov.py);
- without Terraform: the layout of the production root and the modules (files, pinned
  versions, typed and described variables, described outputs, README tables that list
  exactly the inputs and outputs), terraform.tfvars.example, and the .gitignore. Other
  roots are only formatted, initialised, validated and tested.

Terraform needs the binary (1.11 or later: the tests use `override_during`) and the pinned
hashicorp/aws provider in a filesystem mirror, since nothing here may reach the registry:
CLAUDE_PROXY_TF_PROVIDER_MIRROR, by default /opt/tf-plugins. Anywhere with registry
access, one is made with

    terraform -chdir=deploy/terraform/environments/production providers mirror DIR

Either missing FAILS these tests (never a skip): they are the only check of the Terraform.

Everything runs in a temporary copy of deploy/terraform with a CLI configuration of its
own, so the working tree never gets a .terraform/ directory or a lock file. The inits,
validations and `terraform test` run in parallel, once per session.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "deploy" / "terraform"
PRODUCTION = Path("environments/production")
MODULES = sorted(
    p.relative_to(TF_DIR) for p in (TF_DIR / "modules").iterdir() if (p / "main.tf").is_file()
)


def _roots() -> list[Path]:
    """Every root configuration: a directory of deploy/terraform outside modules/ with a
    versions.tf (environments/production, and any other, such as bootstrap/)."""
    found = set()
    for versions in TF_DIR.rglob("versions.tf"):
        where = versions.parent.relative_to(TF_DIR)
        if where.parts[:1] != ("modules",) and ".terraform" not in where.parts:
            found.add(where)
    return sorted(found)


ROOTS = _roots()
CONFIGS = [*ROOTS, *MODULES]
LAYOUT_CONFIGS = [PRODUCTION, *MODULES]  # the conventions test_layout holds them to
# (root, test file) for every root's tests/*.tftest.hcl
ROOT_TESTS = [
    (root, p.name) for root in ROOTS for p in sorted((TF_DIR / root).glob("tests/*.tftest.hcl"))
]
TEST_FILES = [name for root, name in ROOT_TESTS if root == PRODUCTION]
EXPECTED_MODULES = {
    "network", "security", "alb", "ecr", "ecs", "iam", "autoscaling", "alarms", "kms", "efs",
}  # fmt: skip

DEFAULT_MIRROR = "/opt/tf-plugins"
MIN_TERRAFORM = (1, 11)
AWS_PROVIDER_PIN = "5.100.0"
TIMEOUT = 300

HOW_TO_FIX = (
    "deploy/terraform cannot be checked without Terraform {min}+ and the hashicorp/aws "
    f"{AWS_PROVIDER_PIN} provider in a filesystem mirror (no registry access is assumed). "
    "Install terraform, then build a mirror where the registry is reachable:\n"
    "  terraform -chdir=deploy/terraform/environments/production providers mirror "
    "-platform=linux_amd64 /opt/tf-plugins\n"
    "and point CLAUDE_PROXY_TF_PROVIDER_MIRROR at it if it is not /opt/tf-plugins."
).format(min=".".join(map(str, MIN_TERRAFORM)))


# ===================================================================== the toolchain


@dataclass
class Run:
    args: list[str]
    cwd: Path
    returncode: int
    output: str

    def describe(self) -> str:
        return f"$ terraform {' '.join(self.args)}  (in {self.cwd})\n{self.output}"


@dataclass
class Terraform:
    """The binary, the mirror and a scratch copy of deploy/terraform; `problem` if unusable."""

    problem: str | None = None
    binary: str = ""
    copy: Path = Path()
    env: dict[str, str] = field(default_factory=dict)
    results: dict[str, Future[list[Run]]] = field(default_factory=dict)

    def require(self) -> None:
        if self.problem:
            pytest.fail(f"\n{'!' * 78}\n{self.problem}\n\n{HOW_TO_FIX}\n{'!' * 78}", pytrace=False)

    def run(self, args: list[str], where: Path) -> Run:
        cwd = self.copy / where
        try:
            proc = subprocess.run(
                [self.binary, *args],
                cwd=cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            out = f"{exc.stdout or ''}{exc.stderr or ''}"
            return Run(args, where, -1, f"timed out after {TIMEOUT} s\n{out}")
        return Run(args, where, proc.returncode, proc.stdout + proc.stderr)


def _find_problem(binary: str | None, mirror: Path) -> str | None:
    if not binary:
        return "The terraform binary is not on PATH (nor in CLAUDE_PROXY_TERRAFORM)."
    env = {**os.environ, "CHECKPOINT_DISABLE": "1"}
    try:
        out = subprocess.run(
            [binary, "version", "-json"], capture_output=True, text=True, env=env, timeout=60
        )
        info = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError) as exc:
        return f"`{binary} version -json` failed: {exc!r}"
    version = tuple(int(p) for p in re.findall(r"\d+", info["terraform_version"])[:2])
    if version < MIN_TERRAFORM:
        return f"terraform {info['terraform_version']} is too old for the tests (override_during)."
    platform = info.get("platform", "linux_amd64")
    base = mirror / "registry.terraform.io" / "hashicorp" / "aws"
    unpacked = base / AWS_PROVIDER_PIN / platform
    packed = base / f"terraform-provider-aws_{AWS_PROVIDER_PIN}_{platform}.zip"
    if not (unpacked.is_dir() and any(unpacked.glob("terraform-provider-aws*"))) and not (
        packed.is_file()
    ):
        return (
            f"The provider mirror {mirror} has no hashicorp/aws {AWS_PROVIDER_PIN} for "
            f"{platform} (looked for {unpacked}/terraform-provider-aws* and {packed})."
        )
    return None


def _scratch_env(cli_config: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TF_", "AWS_")) and k != "CHECKPOINT_DISABLE"
    }
    env.update(
        TF_CLI_CONFIG_FILE=str(cli_config),
        TF_IN_AUTOMATION="1",
        TF_INPUT="0",
        CHECKPOINT_DISABLE="1",  # no version check against checkpoint-api.hashicorp.com
    )
    return env


def _pipeline(tf: Terraform, pool: ThreadPoolExecutor) -> None:
    """init the root first (it fills the plugin cache the others link from), then all the
    rest in parallel, except that inits take turns: Terraform's plugin cache is not safe
    for concurrent inits (one module's provider link once vanished under another's init:
    "fork/exec .terraform/providers/...: no such file or directory"). Each result is the
    list of commands run, stopping at a failure."""
    init = ["init", "-backend=false", "-input=false", "-no-color"]
    validate = ["validate", "-json", "-no-color"]
    one_init_at_a_time = threading.Lock()

    def chain(where: Path, *commands: list[str], before: tuple[Run, ...] = ()) -> list[Run]:
        runs = list(before)
        for args in commands:
            if runs and runs[-1].returncode != 0:
                break
            if args[0] == "init":
                with one_init_at_a_time:
                    runs.append(tf.run(args, where))
            else:
                runs.append(tf.run(args, where))
        return runs

    # The roots' inits run here, one after the other (the production root's first): a pool
    # task that waited on another's init could starve the pool.
    root_inits = {root: tf.run(init, root) for root in ROOTS}
    for root, name in ROOT_TESTS:  # one `terraform test` per file, in parallel
        test = ["test", "-no-color", f"-filter=tests/{name}"]
        before = (root_inits[root],)
        tf.results[f"test:{root}/{name}"] = pool.submit(chain, root, test, before=before)
    for root in ROOTS:
        tf.results[str(root)] = pool.submit(chain, root, validate, before=(root_inits[root],))
    for module in MODULES:
        tf.results[str(module)] = pool.submit(chain, module, init, validate)


@pytest.fixture(scope="module")
def tf() -> Iterator[Terraform]:
    binary = os.environ.get("CLAUDE_PROXY_TERRAFORM") or shutil.which("terraform")
    mirror = Path(os.environ.get("CLAUDE_PROXY_TF_PROVIDER_MIRROR", DEFAULT_MIRROR))
    problem = _find_problem(binary, mirror)
    if problem or not binary:
        yield Terraform(problem=problem)
        return
    with tempfile.TemporaryDirectory(prefix="claude-proxy-tf-") as tmp:
        scratch = Path(tmp)
        copy = scratch / "terraform"
        shutil.copytree(
            TF_DIR,
            copy,
            ignore=shutil.ignore_patterns(
                ".terraform", ".terraform.lock.hcl", "*.tfstate", "*.tfstate.*",
                "terraform.tfvars", "backend.hcl",
            ),
        )  # fmt: skip
        (scratch / "plugin-cache").mkdir()
        cli_config = scratch / "terraformrc"
        cli_config.write_text(
            f'plugin_cache_dir = "{scratch / "plugin-cache"}"\n'
            "provider_installation {\n"
            "  filesystem_mirror {\n"
            f'    path    = "{mirror}"\n'
            '    include = ["registry.terraform.io/hashicorp/*"]\n'
            "  }\n"
            "  direct {\n"
            '    exclude = ["registry.terraform.io/hashicorp/*"]\n'
            "  }\n"
            "}\n"
        )
        tf = Terraform(binary=binary, copy=copy, env=_scratch_env(cli_config))
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            _pipeline(tf, pool)
            yield tf
            for future in tf.results.values():
                future.result()


# ======================================================================= terraform


def test_fmt(tf: Terraform) -> None:
    tf.require()
    run = tf.run(["fmt", "-check", "-recursive", "-diff", "-no-color", "."], Path())
    assert run.returncode == 0, f"run `terraform fmt -recursive deploy/terraform`:\n{run.output}"


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_init_and_validate(tf: Terraform, config: Path) -> None:
    tf.require()
    runs = tf.results[str(config)].result()
    last = runs[-1]
    assert last.returncode == 0, last.describe()
    assert last.args[0] == "validate", last.describe()
    report = json.loads(last.output)
    assert report["valid"] and report["warning_count"] == 0, json.dumps(report, indent=2)


@pytest.mark.parametrize(("root", "test_file"), ROOT_TESTS, ids=[f"{r}/{n}" for r, n in ROOT_TESTS])
def test_terraform_test(tf: Terraform, root: Path, test_file: str) -> None:
    """Every run of the file passes, and all of them ran."""
    tf.require()
    runs = tf.results[f"test:{root}/{test_file}"].result()
    last = runs[-1]
    assert last.returncode == 0, last.describe()
    assert last.args[0] == "test", last.describe()
    text = (TF_DIR / root / "tests" / test_file).read_text()
    expected = len(re.findall(r'^run\s+"', text, re.M))
    summary = re.search(r"Success! (\d+) passed, (\d+) failed", last.output)
    assert summary, last.describe()
    assert (int(summary[1]), int(summary[2])) == (expected, 0), last.describe()


def test_terraform_tests_are_all_there() -> None:
    assert TEST_FILES == ["production.tftest.hcl", "validation.tftest.hcl", "variants.tftest.hcl"]
    runs = sum(
        len(re.findall(r'^run\s+"', (TF_DIR / PRODUCTION / "tests" / f).read_text(), re.M))
        for f in TEST_FILES
    )
    assert runs >= 30, "the tests lost their runs"


# ================================================================ without terraform


def _unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items() if not str(k).startswith("__")}
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    return value


def _blocks(directory: Path, kind: str) -> dict[str, dict[str, Any]]:
    import hcl2

    found: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.tf")):
        with path.open() as fh:
            for block in _unquote(hcl2.load(fh)).get(kind, []):
                found.update(block)
    return found


def _readme_rows(readme: str, heading: str) -> list[str]:
    """The names in a README table: in a code span, or a terraform-docs anchor."""
    section = readme.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r'^\| (?:`([\w-]+)`|<a name="(?:input|output)_([\w-]+)"></a>)', section, re.M)
    return [a or b for a, b in rows]


def test_modules_are_the_expected_ones() -> None:
    assert {m.name for m in MODULES} == EXPECTED_MODULES


def test_the_production_root_is_found() -> None:
    assert PRODUCTION in ROOTS, ROOTS
    assert not [r for r in ROOTS if r.parts[:1] == ("modules",)], ROOTS


@pytest.mark.parametrize("config", LAYOUT_CONFIGS, ids=str)
def test_layout(config: Path) -> None:
    """Each configuration: the files, the version pins, typed and described variables
    (nullable = false wherever the default is not null), described outputs, and a
    README whose Inputs and Outputs tables list exactly the variables and outputs."""
    directory = TF_DIR / config
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
        assert (directory / name).is_file(), f"{config}/{name} is missing"
    if config == PRODUCTION:
        assert (directory / "terraform.tfvars.example").is_file()
        providers = (directory / "providers.tf").read_text()
        assert re.search(r'default_tags\s*\{[^}]*Project\s*=\s*"claude-proxy"', providers, re.S)
        assert "var.tags" in providers
    banner = re.compile(r"^#{80}\n# \S.*\n#{80}$", re.M)
    assert banner.search((directory / "main.tf").read_text()), f"{config}/main.tf: no banners"

    versions = (directory / "versions.tf").read_text()
    assert re.search(r'required_version\s*=\s*">= 1\.7"', versions), versions
    assert re.search(
        r'aws\s*=\s*\{\s*source\s*=\s*"hashicorp/aws"\s*version\s*=\s*"5\.100\.0"\s*\}',
        versions,
    ), f"{config}/versions.tf must pin hashicorp/aws to exactly {AWS_PROVIDER_PIN}"

    variables = _blocks(directory, "variable")
    outputs = _blocks(directory, "output")
    assert variables and outputs
    for name, spec in variables.items():
        assert spec.get("type"), f"{config}: variable {name} has no type"
        assert spec.get("description"), f"{config}: variable {name} has no description"
        if spec.get("default", "absent") is not None:
            assert spec.get("nullable") is False, f"{config}: variable {name}: nullable = false"
    for name, spec in outputs.items():
        assert spec.get("description"), f"{config}: output {name} has no description"

    readme = (directory / "README.md").read_text()
    fix = "run .venv/bin/python deploy/terraform/readme_tables.py"
    assert _readme_rows(readme, "Inputs") == sorted(variables), f"{config}/README.md: {fix}"
    assert _readme_rows(readme, "Outputs") == sorted(outputs), f"{config}/README.md: {fix}"


def test_tfvars_example_names_root_variables() -> None:
    import hcl2

    root = TF_DIR / PRODUCTION
    with (root / "terraform.tfvars.example").open() as fh:
        example = set(_unquote(hcl2.load(fh)))
    variables = _blocks(root, "variable")
    required = {name for name, spec in variables.items() if "default" not in spec}
    assert example <= set(variables), example - set(variables)
    assert required <= example, f"required but not in the example: {required - example}"


def test_gitignore_keeps_local_terraform_files_out() -> None:
    ignored = [
        "deploy/terraform/environments/production/.terraform/providers/x",
        "deploy/terraform/modules/ecs/.terraform/modules/modules.json",
        "deploy/terraform/modules/ecs/.terraform.lock.hcl",
        "deploy/terraform/environments/production/terraform.tfstate",
        "deploy/terraform/environments/production/terraform.tfstate.backup",
        "deploy/terraform/environments/production/terraform.tfvars",
        "deploy/terraform/environments/production/backend.hcl",
        "deploy/terraform/environments/production/plan.tfplan",
    ]
    kept = [
        "deploy/terraform/environments/production/terraform.tfvars.example",
        "deploy/terraform/environments/production/backend.hcl.example",
        "deploy/terraform/environments/production/.terraform.lock.hcl",
        "deploy/terraform/environments/production/tests/production.tftest.hcl",
        "deploy/terraform/environments/production/tests/mocks/aws.tfmock.hcl",
    ]
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", *ignored, *kept],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    said = set(proc.stdout.split())
    assert said >= set(ignored), f"not ignored: {set(ignored) - said}"
    assert not said & set(kept), f"ignored but must be committable: {said & set(kept)}"
