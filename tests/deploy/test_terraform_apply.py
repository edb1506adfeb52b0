"""Smoke test: `terraform apply` of the whole production root against moto, read back, destroy.

A moto server (moto from PyPI, in this process) listens on 127.0.0.1 at a free port. The
three Secrets Manager secrets and an ACM certificate are created in it first, as an
operator creates them before the first apply. Then, in a scratch copy of deploy/terraform
(the working tree never gets a .terraform/, a state or an override):

- moto_override.tf points every AWS endpoint the root uses at moto, with the test
  credentials, and swaps the S3 backend for a local state;
- `terraform init`, `terraform apply -auto-approve` of the whole root, every module,
  with the defaults, except `alb_deletion_protection = false`: with the default (true)
  AWS refuses the destroy at the end, as it should in production;
- boto3, against moto, reads back what the runbook cites: the ALB's idle timeout, the
  target group's deregistration delay and health check, the task definition's
  stopTimeout, init process and secrets, the autoscaling target and policy, the alarms
  and the topic they notify, the deployment's rollback alarm, the KMS encryption of the
  log group and the topic, and the other names;
- a second `terraform apply` with another image (a deploy): the new task definition
  revision runs, and the previous one is still ACTIVE (the runbook's rollback target);
- `terraform plan` with `fargate_spot_weight` 0 -> 1 against that state, with the real
  provider: an in-place update of the service, never a replacement;
- `terraform plan` with sign-in and budget alerts turned on (their three secrets created in
  moto first): the task definition gets the three secrets and the sign-in settings, the
  execution role exactly the six secret ARNs; and with `oidc_issuer` but no session secret
  the plan fails, naming what is missing;
- `terraform destroy -auto-approve` succeeds and leaves an empty state.

Nothing of the root is excluded or targeted. moto 5 lacks a few API actions the AWS
provider calls; `_fill_moto_gaps` adds them to moto's handlers for this server only, each
with the error moto gives without it (see there). All of them are tag bookkeeping or a
read-back of what moto stores anyway: they change no value this test checks.

`ecs:DescribeServices` reports the tasks running (MOTO_ECS_SERVICE_RUNNING = the desired
count), so the service's `wait_for_steady_state` (true by default) completes.

It takes about two minutes (the provider waits at least 30 s before it first polls a new
load balancer: the ALB alone takes a minute), hence the `slow` marker; nothing deselects it:
`make test` (plain pytest) runs it, as CI does. Terraform and the provider mirror come
from the same place as for test_terraform.py (CLAUDE_PROXY_TERRAFORM,
CLAUDE_PROXY_TF_PROVIDER_MIRROR, by default /opt/tf-plugins); either missing FAILS.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.test_terraform import DEFAULT_MIRROR, HOW_TO_FIX, _find_problem, _scratch_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "deploy" / "terraform"
PRODUCTION = Path("environments/production")

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
DESIRED_COUNT = 2  # the root's desired_count default

SECRET_NAMES = ("ANTHROPIC_API_KEY", "DATABASE_URL", "CLAUDE_PROXY_ADMIN_KEY")
SECRET_VARIABLES = {
    "ANTHROPIC_API_KEY": "anthropic_api_key_secret_arn",
    "DATABASE_URL": "database_url_secret_arn",
    "CLAUDE_PROXY_ADMIN_KEY": "admin_key_secret_arn",
}

# The provider's name for each service endpoint the root's resources and data sources use.
ENDPOINTS = (
    "acm",
    "applicationautoscaling",
    "budgets",
    "cloudwatch",
    "ec2",
    "ecr",
    "ecs",
    "elbv2",
    "iam",
    "kms",
    "logs",
    "s3",
    "secretsmanager",
    "sns",
    "sts",
)

APPLY_TIMEOUT = 600
DESTROY_TIMEOUT = 300


# ========================================================================= moto


def _fill_moto_gaps(mp: pytest.MonkeyPatch) -> list[str]:
    """Add to moto's handlers the API actions the AWS provider 5.100 calls and moto 5.2
    does not have. Each is added only if moto lacks it (a newer moto is used as is), and
    `mp` removes them again. Without them moto answers 500 ("NotImplementedError: The
    <action> action has not been implemented") and the apply fails with:

    - aws_appautoscaling_target: "listing tags for Application Auto Scaling Target (...):
      operation error Application Auto Scaling: ListTagsForResource, ... StatusCode: 500"
      (moto also drops the Tags of RegisterScalableTarget: they are kept here);
    - aws_budgets_budget: "reading Budget (123456789012:claude-proxy-monthly) subscribers:
      operation error Budgets: DescribeSubscribersForNotification, ... StatusCode: 500",
      then the same for budgets' ListTagsForResource (and CreateBudget's ResourceTags are
      dropped: kept here).

    Tag/UntagResource come along so that an update would work as well.

    And one gap that fails no apply but falsifies a plan: moto drops a service's
    capacityProviderStrategy (CreateService, UpdateService) and describes it with launchType
    EC2 and no strategy. The provider then reads an empty strategy back, and plans any change
    of it (fargate_spot_weight 0 -> 1) as a replacement of the service, which is its rule
    for an empty previous strategy, not what it does against ECS. Kept and described here
    as ECS does (no launchType next to a strategy).
    """
    from moto.applicationautoscaling.responses import ApplicationAutoScalingResponse
    from moto.budgets.responses import BudgetsResponse
    from moto.ecs.models import EC2ContainerServiceBackend
    from moto.ecs.responses import EC2ContainerServiceResponse

    tags: dict[str, dict[str, str]] = {}  # resource ARN -> tags
    added: list[str] = []

    def add(cls: type, name: str, handler: Callable[[Any], str]) -> None:
        if not hasattr(cls, name):
            mp.setattr(cls, name, handler, raising=False)
            added.append(f"{cls.__name__}.{name}")

    def wrap(cls: type, name: str, after: Callable[[Any, Any], None]) -> None:
        original = getattr(cls, name)

        def handler(self: Any) -> Any:
            body = original(self)
            after(self, body)
            return body

        mp.setattr(cls, name, handler)

    # ---------------------------------------------------- application-autoscaling
    aas = ApplicationAutoScalingResponse
    if not hasattr(aas, "list_tags_for_resource"):
        wrap(
            aas,
            "register_scalable_target",
            lambda self, body: tags.setdefault(json.loads(body)["ScalableTargetARN"], {}).update(
                self._get_param("Tags") or {}
            ),
        )

    def aas_tag(self: Any) -> str:
        tags.setdefault(self._get_param("ResourceARN"), {}).update(self._get_param("Tags"))
        return "{}"

    def aas_untag(self: Any) -> str:
        for key in self._get_param("TagKeys"):
            tags.get(self._get_param("ResourceARN"), {}).pop(key, None)
        return "{}"

    def aas_list(self: Any) -> str:
        return json.dumps({"Tags": tags.get(self._get_param("ResourceARN"), {})})

    add(aas, "tag_resource", aas_tag)
    add(aas, "untag_resource", aas_untag)
    add(aas, "list_tags_for_resource", aas_list)

    # ------------------------------------------------------------------- budgets
    def budget_arn(self: Any) -> str:
        name = self._get_param("Budget")["BudgetName"]
        return f"arn:{self.partition}:budgets::{self._get_param('AccountId')}:budget/{name}"

    if not hasattr(BudgetsResponse, "list_tags_for_resource"):
        wrap(
            BudgetsResponse,
            "create_budget",
            lambda self, body: tags.__setitem__(
                budget_arn(self),
                {t["Key"]: t["Value"] for t in self._get_param("ResourceTags") or []},
            ),
        )

    def budgets_tag(self: Any) -> str:
        new = {t["Key"]: t["Value"] for t in self._get_param("ResourceTags")}
        tags.setdefault(self._get_param("ResourceARN"), {}).update(new)
        return "{}"

    def budgets_untag(self: Any) -> str:
        for key in self._get_param("ResourceTagKeys"):
            tags.get(self._get_param("ResourceARN"), {}).pop(key, None)
        return "{}"

    def budgets_list(self: Any) -> str:
        found = tags.get(self._get_param("ResourceARN"), {})
        return json.dumps({"ResourceTags": [{"Key": k, "Value": v} for k, v in found.items()]})

    def budgets_subscribers(self: Any) -> str:
        budget = self.backend.budgets[self._get_param("AccountId")][self._get_param("BudgetName")]
        wanted = self._get_param("Notification")
        for notification in budget.notifications:
            if all(notification.details.get(k) == v for k, v in wanted.items()):
                return json.dumps({"Subscribers": notification.subscribers})
        return json.dumps({"Subscribers": []})

    add(BudgetsResponse, "tag_resource", budgets_tag)
    add(BudgetsResponse, "untag_resource", budgets_untag)
    add(BudgetsResponse, "list_tags_for_resource", budgets_list)
    add(BudgetsResponse, "describe_subscribers_for_notification", budgets_subscribers)

    # ----------------------------------------------------------------------- ecs
    def keep_strategy(name_param: str) -> Callable[[Any, Any], None]:
        def after(self: Any, result: Any) -> None:
            strategy = self._get_param("capacityProviderStrategy")
            if strategy:
                cluster = self._get_param("cluster", "default")
                name = self._get_param(name_param)
                (service,), _ = self.ecs_backend.describe_services(cluster, [name])
                service.capacity_provider_strategy = strategy
                service.launch_type = None

        return after

    create = inspect.signature(EC2ContainerServiceBackend.create_service).parameters
    if "capacity_provider_strategy" not in create:
        ecs = EC2ContainerServiceResponse
        wrap(ecs, "create_service", keep_strategy("serviceName"))
        wrap(ecs, "update_service", keep_strategy("service"))
        added.append("EC2ContainerServiceResponse.create_service/update_service")
    return added


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)  # one access line per request: thousands
    with pytest.MonkeyPatch.context() as mp:
        # Nothing of the environment's AWS configuration (profile, region, credentials).
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            mp.delenv(name)
        for name in ("NO_PROXY", "no_proxy"):
            mp.setenv(name, ",".join(filter(None, [os.environ.get(name), "127.0.0.1"])))
        # moto reports a service's tasks running as soon as it exists (read at creation).
        mp.setenv("MOTO_ECS_SERVICE_RUNNING", str(DESIRED_COUNT))
        _fill_moto_gaps(mp)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()
            werkzeug.setLevel(level)


# ==================================================================== terraform


@dataclass
class Deployment:
    url: str
    scratch: Path
    env: dict[str, str]
    binary: str
    secret_arns: dict[str, str]  # env var name -> ARN
    certificate_arn: str
    outputs: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)  # moto.tfvars.json
    destroyed: bool = False

    def write_variables(self, **changes: Any) -> None:
        self.variables.update(changes)
        (self.scratch / PRODUCTION / "moto.tfvars.json").write_text(
            json.dumps(self.variables, indent=2)
        )

    def apply(self) -> None:
        self.run("apply", "-auto-approve", "-input=false", "-no-color",
                 "-var-file=moto.tfvars.json")  # fmt: skip
        self.outputs = {
            k: v["value"] for k, v in json.loads(self.run("output", "-json", "-no-color")).items()
        }

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name=REGION, **CREDENTIALS)

    def terraform(
        self, *args: str, timeout: int = APPLY_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.binary, *args],
                cwd=self.scratch / PRODUCTION,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            out = f"{exc.stdout or ''}{exc.stderr or ''}"
            return subprocess.CompletedProcess(
                exc.cmd, -1, f"timed out after {timeout} s\n{out}", ""
            )

    def run(self, *args: str, timeout: int = APPLY_TIMEOUT) -> str:
        """A terraform command that must succeed: its output, or the test fails with it."""
        proc = self.terraform(*args, timeout=timeout)
        output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            pytest.fail(
                f"$ terraform {' '.join(args)} (exit {proc.returncode}) against moto at "
                f"{self.url}:\n{output[-12000:]}",
                pytrace=False,
            )
        return output

    def destroy(self) -> str:
        self.destroyed = True
        return self.run("destroy", "-auto-approve", "-input=false", "-no-color",
                        "-var-file=moto.tfvars.json", timeout=DESTROY_TIMEOUT)  # fmt: skip


def _override(url: str) -> str:
    endpoints = "\n".join(f'    {name:<22} = "{url}"' for name in ENDPOINTS)
    return f"""\
# Written by tests/deploy/test_terraform_apply.py into a scratch copy: moto, not AWS.
terraform {{
  backend "local" {{}}
}}

provider "aws" {{
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  s3_use_path_style           = true
  # The account ID is asked of moto's sts:GetCallerIdentity (123456789012): skipping it
  # leaves it empty, and aws_budgets_budget then fails with "unexpected format for ID
  # (:claude-proxy-monthly), expected AccountID:BudgetName".
  skip_requesting_account_id = false
  # An action moto does not implement answers 500, which the SDK would retry for minutes.
  max_retries = 2

  endpoints {{
{endpoints}
  }}
}}
"""


@pytest.fixture(scope="module")
def deployment(moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    binary = os.environ.get("CLAUDE_PROXY_TERRAFORM") or shutil.which("terraform")
    mirror = Path(os.environ.get("CLAUDE_PROXY_TF_PROVIDER_MIRROR", DEFAULT_MIRROR))
    if problem := _find_problem(binary, mirror):
        pytest.fail(f"\n{'!' * 78}\n{problem}\n\n{HOW_TO_FIX}\n{'!' * 78}", pytrace=False)
    assert binary

    scratch = tmp_path_factory.mktemp("terraform-apply")
    copy = scratch / "terraform"
    shutil.copytree(
        TF_DIR,
        copy,
        ignore=shutil.ignore_patterns(
            ".terraform", ".terraform.lock.hcl", "*.tfstate", "*.tfstate.*",
            "terraform.tfvars", "backend.hcl", "*_override.tf", "override.tf",
        ),
    )  # fmt: skip
    cli_config = scratch / "terraformrc"
    cli_config.write_text(
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

    dep = Deployment(
        url=moto_url,
        scratch=copy,
        env=_scratch_env(cli_config),
        binary=binary,
        secret_arns={},
        certificate_arn="",
    )

    # What the operator creates before the first apply: the secrets and the certificate.
    secrets = dep.client("secretsmanager")
    for name in SECRET_NAMES:
        created = secrets.create_secret(Name=f"claude-proxy/{name}", SecretString=f"{name}-x")
        dep.secret_arns[name] = created["ARN"]
    dep.certificate_arn = dep.client("acm").request_certificate(
        DomainName="claude-proxy.example.com", ValidationMethod="DNS"
    )["CertificateArn"]

    root = copy / PRODUCTION
    (root / "moto_override.tf").write_text(_override(moto_url))
    dep.write_variables(**{
        "aws_region": REGION,
        "certificate_arn": dep.certificate_arn,
        "container_image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/claude-proxy:smoke-1",
        # The one departure from the defaults: AWS refuses to delete a protected ALB.
        "alb_deletion_protection": False,
        **{SECRET_VARIABLES[name]: arn for name, arn in dep.secret_arns.items()},
    })  # fmt: skip

    dep.run("init", "-input=false", "-no-color")
    dep.apply()
    yield dep
    if not dep.destroyed:  # test_destroy did not run (-k, or an earlier failure)
        dep.destroy()


# ===================================================================== read back


def test_load_balancer(deployment: Deployment) -> None:
    elbv2 = deployment.client("elbv2")
    (alb,) = elbv2.describe_load_balancers(Names=["claude-proxy-alb"])["LoadBalancers"]
    assert alb["Type"] == "application"
    # internal = false: the provider sends no Scheme (AWS's default, internet-facing), and
    # moto then reports none.
    assert alb.get("Scheme", "internet-facing") == "internet-facing"
    assert alb["DNSName"] == deployment.outputs["alb_dns_name"]
    attributes = {
        a["Key"]: a["Value"]
        for a in elbv2.describe_load_balancer_attributes(LoadBalancerArn=alb["LoadBalancerArn"])[
            "Attributes"
        ]
    }
    assert attributes["idle_timeout.timeout_seconds"] == "300", attributes
    assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true", attributes

    listeners = {
        listener["Port"]: listener
        for listener in elbv2.describe_listeners(LoadBalancerArn=alb["LoadBalancerArn"])[
            "Listeners"
        ]
    }
    assert sorted(listeners) == [80, 443]
    https = listeners[443]
    assert https["Protocol"] == "HTTPS"
    assert [c["CertificateArn"] for c in https["Certificates"]] == [deployment.certificate_arn]
    assert https["DefaultActions"][0]["Type"] == "forward"
    redirect = listeners[80]["DefaultActions"][0]
    assert redirect["Type"] == "redirect"
    assert redirect["RedirectConfig"]["Protocol"] == "HTTPS"
    assert redirect["RedirectConfig"]["StatusCode"] == "HTTP_301"


def test_target_group(deployment: Deployment) -> None:
    elbv2 = deployment.client("elbv2")
    (tg,) = elbv2.describe_target_groups(Names=["claude-proxy-tg"])["TargetGroups"]
    assert (tg["Protocol"], tg["Port"], tg["TargetType"]) == ("HTTP", 8000, "ip")
    health = {
        "path": tg["HealthCheckPath"],
        "matcher": tg["Matcher"]["HttpCode"],
        "interval": tg["HealthCheckIntervalSeconds"],
        "timeout": tg["HealthCheckTimeoutSeconds"],
        "healthy": tg["HealthyThresholdCount"],
        "unhealthy": tg["UnhealthyThresholdCount"],
    }
    assert health == {
        "path": "/health",
        "matcher": "200",
        "interval": 10,
        "timeout": 5,
        "healthy": 2,
        "unhealthy": 3,
    }
    attributes = {
        a["Key"]: a["Value"]
        for a in elbv2.describe_target_group_attributes(TargetGroupArn=tg["TargetGroupArn"])[
            "Attributes"
        ]
    }
    # Long streams outlive a deployment: 900 s before ECS sends the old task SIGTERM.
    assert attributes["deregistration_delay.timeout_seconds"] == "900", attributes
    assert attributes["load_balancing.algorithm.type"] == "least_outstanding_requests"


def _task_definition(deployment: Deployment) -> dict[str, Any]:
    arn = deployment.outputs["task_definition_arn"]
    task: dict[str, Any] = deployment.client("ecs").describe_task_definition(taskDefinition=arn)[
        "taskDefinition"
    ]
    return task


def test_task_definition(deployment: Deployment) -> None:
    task = _task_definition(deployment)
    assert task["family"] == "claude-proxy"
    (app,) = [c for c in task["containerDefinitions"] if c["name"] == "claude-proxy"]
    assert app["stopTimeout"] == 120
    shutdown = {
        e["name"]: int(e["value"])
        for e in app["environment"]
        if e["name"]
        in (
            "CLAUDE_PROXY_PRE_STOP_SECONDS",
            "CLAUDE_PROXY_DRAIN_SECONDS",
            "CLAUDE_PROXY_LOG_FLUSH_TIMEOUT_SECONDS",
        )
    }
    assert len(shutdown) == 3 and sum(shutdown.values()) < app["stopTimeout"], shutdown
    assert app["linuxParameters"]["initProcessEnabled"] is True
    secrets = {s["name"]: s["valueFrom"] for s in app["secrets"]}
    assert secrets == deployment.secret_arns
    environment = {e["name"] for e in app["environment"]}
    assert not environment & set(SECRET_NAMES), "a secret is in the plain environment"
    assert app["logConfiguration"]["logDriver"] == "awslogs"
    assert app["logConfiguration"]["options"]["awslogs-group"] == "/ecs/claude-proxy-service"
    assert task["executionRoleArn"] == deployment.outputs["execution_role_arn"]


def test_execution_role_reads_exactly_the_three_secrets(deployment: Deployment) -> None:
    iam = deployment.client("iam")
    role = deployment.outputs["execution_role_arn"].rsplit("/", 1)[1]
    statements = [
        statement
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]
        for statement in iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"][
            "Statement"
        ]
    ]
    secret_statements = [
        s for s in statements if any(a.startswith("secretsmanager:") for a in _list(s["Action"]))
    ]
    assert len(secret_statements) == 1, statements
    assert _list(secret_statements[0]["Action"]) == ["secretsmanager:GetSecretValue"]
    assert sorted(_list(secret_statements[0]["Resource"])) == sorted(
        deployment.secret_arns.values()
    )


def _state_resource(deployment: Deployment, address: str) -> dict[str, Any]:
    """The attributes of one resource in the state (`terraform show -json`)."""
    state = json.loads(deployment.run("show", "-json", "-no-color"))
    modules = [state["values"]["root_module"]]
    while modules:
        module = modules.pop()
        for resource in module.get("resources", []):
            if resource["address"] == address:
                values: dict[str, Any] = resource["values"]
                return values
        modules.extend(module.get("child_modules", []))
    raise AssertionError(f"{address} is not in the state")


def _list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def test_service(deployment: Deployment) -> None:
    ecs = deployment.client("ecs")
    (cluster,) = ecs.describe_clusters(clusters=["claude-proxy-cluster"])["clusters"]
    assert cluster["status"] == "ACTIVE"
    (service,) = ecs.describe_services(
        cluster="claude-proxy-cluster", services=["claude-proxy-service"]
    )["services"]
    assert service["status"] == "ACTIVE"
    assert service["taskDefinition"] == deployment.outputs["task_definition_arn"]
    assert service["desiredCount"] == DESIRED_COUNT
    # The proxy's own errors roll a deployment back, not the ALB's target 5xx. moto keeps
    # no deploymentConfiguration: what the provider sent is read from the state.
    (alarms,) = _state_resource(deployment, "module.ecs.aws_ecs_service.this")["alarms"]
    assert alarms["alarm_names"] == ["claude-proxy-proxy-errors"], alarms
    assert alarms["enable"] is True and alarms["rollback"] is True, alarms
    (tg,) = deployment.client("elbv2").describe_target_groups(Names=["claude-proxy-tg"])[
        "TargetGroups"
    ]
    assert service["loadBalancers"] == [
        {
            "targetGroupArn": tg["TargetGroupArn"],
            "containerName": "claude-proxy",
            "containerPort": 8000,
        }
    ]
    (group,) = deployment.client("logs").describe_log_groups(
        logGroupNamePrefix="/ecs/claude-proxy-service"
    )["logGroups"]
    assert group["logGroupName"] == "/ecs/claude-proxy-service"


def test_autoscaling(deployment: Deployment) -> None:
    aas = deployment.client("application-autoscaling")
    resource_id = "service/claude-proxy-cluster/claude-proxy-service"
    (target,) = aas.describe_scalable_targets(ServiceNamespace="ecs", ResourceIds=[resource_id])[
        "ScalableTargets"
    ]
    assert target["ScalableDimension"] == "ecs:service:DesiredCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 10)

    policies = aas.describe_scaling_policies(ServiceNamespace="ecs", ResourceId=resource_id)[
        "ScalingPolicies"
    ]
    assert [p["PolicyName"] for p in policies] == ["claude-proxy-cpu-target"]
    (policy,) = policies
    assert policy["PolicyType"] == "TargetTrackingScaling"
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == 70
    assert (config["ScaleOutCooldown"], config["ScaleInCooldown"]) == (60, 300)
    metric = config["PredefinedMetricSpecification"]["PredefinedMetricType"]
    assert metric == "ECSServiceAverageCPUUtilization"
    assert deployment.outputs["autoscaling_policy_names"] == ["claude-proxy-cpu-target"]


ALARMS = {  # name -> threshold
    "claude-proxy-target-5xx-rate": 1.0,
    "claude-proxy-proxy-errors": 1.0,
    "claude-proxy-elb-5xx": 10.0,
    "claude-proxy-cpu-high": 85.0,
    "claude-proxy-memory-high": 85.0,
    "claude-proxy-unhealthy-hosts": 0.0,
}


def test_alarms(deployment: Deployment) -> None:
    alarms = {
        a["AlarmName"]: a
        for a in deployment.client("cloudwatch").describe_alarms(AlarmNamePrefix="claude-proxy-")[
            "MetricAlarms"
        ]
    }
    assert sorted(alarms) == sorted(ALARMS)
    topic = deployment.outputs["sns_topic_arn"]
    assert topic == f"arn:aws:sns:{REGION}:{ACCOUNT}:claude-proxy-alarms"
    deployment.client("sns").get_topic_attributes(TopicArn=topic)  # it exists
    for name, threshold in ALARMS.items():
        alarm = alarms[name]
        assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (
            threshold,
            "GreaterThanThreshold",
        ), name
        assert alarm["AlarmActions"] == alarm["OKActions"] == [topic], name

    lb = {"Name": "LoadBalancer", "Value": deployment.outputs["alb_arn_suffix"]}
    tg = {"Name": "TargetGroup", "Value": deployment.outputs["target_group_arn_suffix"]}
    assert alarms["claude-proxy-elb-5xx"]["Dimensions"] == [lb]
    assert sorted(alarms["claude-proxy-unhealthy-hosts"]["Dimensions"], key=str) == sorted(
        [lb, tg], key=str
    )
    for name, metric in (("cpu-high", "CPUUtilization"), ("memory-high", "MemoryUtilization")):
        alarm = alarms[f"claude-proxy-{name}"]
        assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/ECS", metric), alarm
        assert sorted(d["Value"] for d in alarm["Dimensions"]) == [
            "claude-proxy-cluster",
            "claude-proxy-service",
        ]
    # 1 means 1 %: the series the alarm evaluates is 100 * 5xx / requests.
    queries = {q["Id"]: q for q in alarms["claude-proxy-target-5xx-rate"]["Metrics"]}
    (returned,) = [q for q in queries.values() if q.get("ReturnData")]
    assert returned["Expression"].replace(" ", "").startswith("100*"), returned
    metrics = {
        q["MetricStat"]["Metric"]["MetricName"] for q in queries.values() if "MetricStat" in q
    }
    assert metrics == {"HTTPCode_Target_5XX_Count", "RequestCount"}
    # The rollback alarm: the proxy's EMF ProxyErrors over its RequestCount, per service.
    queries = {q["Id"]: q for q in alarms["claude-proxy-proxy-errors"]["Metrics"]}
    (returned,) = [q for q in queries.values() if q.get("ReturnData")]
    assert returned["Expression"].replace(" ", "").startswith("100*"), returned
    stats = [q["MetricStat"]["Metric"] for q in queries.values() if "MetricStat" in q]
    assert sorted((m["Namespace"], m["MetricName"]) for m in stats) == [
        ("ClaudeProxy", "ProxyErrors"),
        ("ClaudeProxy", "RequestCount"),
    ], stats
    for metric in stats:
        assert metric["Dimensions"] == [{"Name": "ServiceName", "Value": "claude-proxy-service"}]


def test_encryption_at_rest(deployment: Deployment) -> None:
    """The log group and the alarm topic are encrypted with the customer-managed key the
    root creates by default (rotation on); ECR with KMS."""
    key = deployment.outputs["kms_key_arn"]
    kms = deployment.client("kms")
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyManager"] == "CUSTOMER"
    assert kms.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"] is True
    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases()["Aliases"]}
    assert aliases.get("alias/claude-proxy") == key.rsplit("/", 1)[1], aliases
    (group,) = deployment.client("logs").describe_log_groups(
        logGroupNamePrefix="/ecs/claude-proxy-service"
    )["logGroups"]
    assert group.get("kmsKeyId") == key, group
    topic = deployment.client("sns").get_topic_attributes(
        TopicArn=deployment.outputs["sns_topic_arn"]
    )["Attributes"]
    assert topic.get("KmsMasterKeyId") == key, topic
    (repo,) = deployment.client("ecr").describe_repositories(repositoryNames=["claude-proxy"])[
        "repositories"
    ]
    assert repo["encryptionConfiguration"]["encryptionType"] == "KMS", repo


def test_other_named_resources(deployment: Deployment) -> None:
    (repo,) = deployment.client("ecr").describe_repositories(repositoryNames=["claude-proxy"])[
        "repositories"
    ]
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert repo["imageScanningConfiguration"]["scanOnPush"] is True

    budget = deployment.client("budgets").describe_budget(
        AccountId=ACCOUNT, BudgetName="claude-proxy-monthly"
    )["Budget"]
    assert (float(budget["BudgetLimit"]["Amount"]), budget["BudgetLimit"]["Unit"]) == (500, "USD")
    assert (budget["BudgetType"], budget["TimeUnit"]) == ("COST", "MONTHLY")

    groups = deployment.client("ec2").describe_security_groups(
        Filters=[{"Name": "vpc-id", "Values": [deployment.outputs["vpc_id"]]}]
    )["SecurityGroups"]
    ids = {g["GroupName"]: g["GroupId"] for g in groups}
    assert ids.get("claude-proxy-alb-sg") == deployment.outputs["alb_security_group_id"], ids
    assert ids.get("claude-proxy-task-sg") == deployment.outputs["task_security_group_id"], ids


# ================================================================ change the state


def test_a_new_image_keeps_the_previous_revision_active(deployment: Deployment) -> None:
    """A deploy (another image, applied): the service runs the new revision, and the one
    before stays ACTIVE (skip_destroy), so the runbook's rollback, pointing the service at
    the previous revision, works. Without skip_destroy Terraform deregisters it: INACTIVE."""
    ecs = deployment.client("ecs")
    first = deployment.outputs["task_definition_arn"]
    deployment.write_variables(
        container_image=f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/claude-proxy:smoke-2"
    )
    deployment.apply()
    second = deployment.outputs["task_definition_arn"]
    assert second != first, "the new image registered no new revision"
    assert second.rsplit(":", 1)[0] == first.rsplit(":", 1)[0]  # same family
    (service,) = ecs.describe_services(
        cluster="claude-proxy-cluster", services=["claude-proxy-service"]
    )["services"]
    assert service["taskDefinition"] == second
    previous = ecs.describe_task_definition(taskDefinition=first)["taskDefinition"]
    assert previous["status"] == "ACTIVE", f"{first} is {previous['status']} after the deploy"
    (app,) = [c for c in previous["containerDefinitions"] if c["name"] == "claude-proxy"]
    assert app["image"].endswith(":smoke-1"), app["image"]
    active = ecs.list_task_definitions(familyPrefix="claude-proxy", status="ACTIVE")
    assert {first, second} <= set(active["taskDefinitionArns"]), active


def test_turning_fargate_spot_on_updates_the_service_in_place(deployment: Deployment) -> None:
    """fargate_spot_weight 0 -> 1 adds a FARGATE_SPOT capacity provider strategy. Provider
    5.100 replaces the service for that (deleting it, and every task at once) unless
    force_new_deployment is set: planned against the applied state, with the real
    provider, it must be an update in place, and nothing may be replaced."""
    deployment.run("plan", "-input=false", "-no-color", "-lock=false", "-out=spot.tfplan",
                   "-var-file=moto.tfvars.json", "-var=fargate_spot_weight=1")  # fmt: skip
    plan = json.loads(deployment.run("show", "-json", "-no-color", "spot.tfplan"))
    changes = {c["address"]: c["change"] for c in plan.get("resource_changes", []) if c["change"]}
    service = changes["module.ecs.aws_ecs_service.this"]
    assert service["actions"] == ["update"], (
        f"turning Fargate Spot on {'+'.join(service['actions'])}s the service; "
        f"replace_paths: {service.get('replace_paths')}"
    )
    strategy = service["after"]["capacity_provider_strategy"]
    assert sorted((s["capacity_provider"], s["weight"]) for s in strategy) == [
        ("FARGATE", 1),
        ("FARGATE_SPOT", 1),
    ], strategy
    replaced = sorted(a for a, c in changes.items() if "delete" in c["actions"])
    assert not replaced, f"the plan deletes or replaces {replaced}"


# ============================================================ sign-in and alerts

# The optional secrets (environment variable -> the root's variable) and plain settings.
SIGNIN_SECRET_VARIABLES = {
    "CLAUDE_PROXY_OIDC_CLIENT_SECRET": "oidc_client_secret_secret_arn",
    "CLAUDE_PROXY_SESSION_SECRET": "session_secret_secret_arn",
    "CLAUDE_PROXY_ALERT_WEBHOOK_URL": "alert_webhook_url_secret_arn",
}
SIGNIN_SETTINGS: dict[str, Any] = {
    "oidc_issuer": "https://example.okta.com/oauth2/default",
    "oidc_client_id": "0oa1b2c3d4e5f6g7h8i9",
    "oidc_admin_groups": ["platform-admins"],
    "oidc_allowed_groups": ["engineering", "platform-admins"],
    "public_url": "https://claude-proxy.example.com",
}
SIGNIN_ENVIRONMENT = {
    "CLAUDE_PROXY_OIDC_ISSUER": "https://example.okta.com/oauth2/default",
    "CLAUDE_PROXY_OIDC_CLIENT_ID": "0oa1b2c3d4e5f6g7h8i9",
    "CLAUDE_PROXY_OIDC_ADMIN_GROUPS": "platform-admins",
    "CLAUDE_PROXY_OIDC_ALLOWED_GROUPS": "engineering,platform-admins",
    "CLAUDE_PROXY_PUBLIC_URL": "https://claude-proxy.example.com",
}


@pytest.fixture(scope="module")
def signin_secret_arns(deployment: Deployment) -> dict[str, str]:
    """The secrets an operator creates to turn sign-in and alerts on: env var -> ARN."""
    secrets = deployment.client("secretsmanager")
    return {
        name: secrets.create_secret(Name=f"claude-proxy/{name}", SecretString=f"{name}-x")["ARN"]
        for name in SIGNIN_SECRET_VARIABLES
    }


def _plan_with(deployment: Deployment, name: str, variables: dict[str, Any]) -> list[str]:
    """The arguments of a `terraform plan` against the applied state, with the deployment's
    variables and `variables` on top (written to <name>.tfvars.json; nothing is applied)."""
    (deployment.scratch / PRODUCTION / f"{name}.tfvars.json").write_text(json.dumps(variables))
    return ["plan", "-input=false", "-no-color", "-lock=false", "-refresh=false",
            "-var-file=moto.tfvars.json", f"-var-file={name}.tfvars.json"]  # fmt: skip


def test_turning_sign_in_on_adds_its_secrets_and_settings(
    deployment: Deployment, signin_secret_arns: dict[str, str]
) -> None:
    """oidc_issuer and the rest, planned against the applied state with the real provider:
    the new task definition revision has the three new secrets (valueFrom their ARNs, never
    in the plain environment) and the sign-in settings; the execution role may read exactly
    the six secrets; nothing but the task definition, the role's policy and the service
    changes."""
    variables = {
        **SIGNIN_SETTINGS,
        **{SIGNIN_SECRET_VARIABLES[n]: arn for n, arn in signin_secret_arns.items()},
    }
    deployment.run(*_plan_with(deployment, "signin", variables), "-out=signin.tfplan")
    plan = json.loads(deployment.run("show", "-json", "-no-color", "signin.tfplan"))
    changes = {
        c["address"]: c["change"]
        for c in plan.get("resource_changes", [])
        if c["change"]["actions"] != ["no-op"]
    }
    assert sorted(changes) == [
        "module.ecs.aws_ecs_service.this",
        "module.ecs.aws_ecs_task_definition.this",
        "module.iam.aws_iam_role_policy.execution",
    ], {a: c["actions"] for a, c in changes.items()}

    task = changes["module.ecs.aws_ecs_task_definition.this"]["after"]
    (app,) = [c for c in json.loads(task["container_definitions"]) if c["name"] == "claude-proxy"]
    secrets = {s["name"]: s["valueFrom"] for s in app["secrets"]}
    assert secrets == {**deployment.secret_arns, **signin_secret_arns}, secrets
    environment = {e["name"]: e["value"] for e in app["environment"]}
    assert {k: environment.get(k) for k in SIGNIN_ENVIRONMENT} == SIGNIN_ENVIRONMENT
    assert "CLAUDE_PROXY_OIDC_SCOPES" not in environment, "unset: the app's default"
    assert not set(environment) & {*SECRET_NAMES, *SIGNIN_SECRET_VARIABLES}, (
        "a secret is in the plain environment"
    )

    policy = json.loads(changes["module.iam.aws_iam_role_policy.execution"]["after"]["policy"])
    secret_statements = [
        s
        for s in policy["Statement"]
        if any(a.startswith("secretsmanager:") for a in _list(s["Action"]))
    ]
    assert len(secret_statements) == 1, policy
    assert _list(secret_statements[0]["Action"]) == ["secretsmanager:GetSecretValue"]
    assert sorted(_list(secret_statements[0]["Resource"])) == sorted(
        [*deployment.secret_arns.values(), *signin_secret_arns.values()]
    )
    redirect = plan["output_changes"]["oidc_redirect_uri"]["after"]
    assert redirect == "https://claude-proxy.example.com/oauth/callback", redirect


def test_sign_in_without_the_session_secret_fails_the_plan(
    deployment: Deployment, signin_secret_arns: dict[str, str]
) -> None:
    """The proxy would refuse to start (settings.py): the plan refuses first, and says
    what is missing."""
    variables = {
        **SIGNIN_SETTINGS,
        "oidc_client_secret_secret_arn": signin_secret_arns["CLAUDE_PROXY_OIDC_CLIENT_SECRET"],
    }
    proc = deployment.terraform(*_plan_with(deployment, "signin-partial", variables))
    output = " ".join((proc.stdout + proc.stderr).split())  # Terraform wraps long messages
    assert proc.returncode != 0, output[-3000:]
    assert (
        "oidc_issuer is set, so sign-in is on: also set session_secret_secret_arn. "
        "The proxy refuses to start without them"
    ) in output, output[-3000:]


# ====================================================================== destroy


def test_destroy(deployment: Deployment) -> None:
    """Last: the whole root goes away again."""
    output = deployment.destroy()
    assert "Destroy complete!" in output, output[-3000:]
    state = deployment.run("state", "list", "-no-color")
    assert state.strip() == "", f"left in the state after destroy:\n{state}"
    elbv2 = deployment.client("elbv2")
    assert not [
        lb
        for lb in elbv2.describe_load_balancers()["LoadBalancers"]
        if lb["LoadBalancerName"] == "claude-proxy-alb"
    ]
    assert not deployment.client("cloudwatch").describe_alarms(AlarmNamePrefix="claude-proxy-")[
        "MetricAlarms"
    ]
