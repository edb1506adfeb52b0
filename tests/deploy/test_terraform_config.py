"""The values docs/runbook.md cites, as deploy/terraform configures them (no Terraform run).

Every .tf file of the production root and of its modules is parsed with python-hcl2, and
each value is followed from the attribute of the resource that carries it to where it is
set: a literal in the resource, a module input of the production root, a local, or the
default of a variable (the root's, or else the module's). So `idle_timeout = 300` means
"what `terraform apply` without a terraform.tfvars gives the ALB", and a failure prints
that chain.

Resources are found by the name the runbook cites (the ALB named claude-proxy-alb, the
alarm named claude-proxy-cpu-high), not by their Terraform address. Each value is
checked here once. Expressions python-hcl2 cannot evaluate (the merge() that builds the
container definition) are matched as text, and a test says so.

The same values, planned by Terraform itself against a mocked provider, are in
deploy/terraform/environments/production/tests (run by test_terraform.py); applied to a
moto server and read back with boto3, in test_terraform_apply.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "deploy" / "terraform"
PRODUCTION = TF_DIR / "environments" / "production"

# var.x, local.x, module.m.output (module.m[0].output), aws_type.name.argument
REF = re.compile(r"\$\{([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*(?:\[0\])?)+)\}")
# ${COND ? A : B} with COND a reference, or a reference compared with null; A and B are
# references or null. The only conditionals that pick a value the checks follow.
OPERAND = r"(?:[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*(?:\[0\])?)+|null)"
CONDITIONAL = re.compile(
    rf"\$\{{({OPERAND})(?:\s*(==|!=)\s*null)?\s*\?\s*({OPERAND})\s*:\s*({OPERAND})\}}"
)
SECRETS = ("ANTHROPIC_API_KEY", "DATABASE_URL", "CLAUDE_PROXY_ADMIN_KEY")
# Sign-in and budget alerts (docs/people.md): in the container only when their ARN is set.
OPTIONAL_SECRETS = (
    "CLAUDE_PROXY_OIDC_CLIENT_SECRET",
    "CLAUDE_PROXY_SESSION_SECRET",
    "CLAUDE_PROXY_ALERT_WEBHOOK_URL",
)


# ================================================================== the configuration


def _unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def _clean(value: Any) -> Any:
    """hcl2's output without its bookkeeping keys, block labels unquoted. String values
    keep their quotes: '"x"' is a literal, '${...}' an expression."""
    if isinstance(value, dict):
        return {
            _unquote(str(k)): _clean(v) for k, v in value.items() if not str(k).startswith("__")
        }
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


@dataclass
class Config:
    """The .tf files of one directory."""

    name: str  # e.g. "modules/alb"
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # "aws_lb.this"
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)  # calls, by name
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> Config:
        config = cls(str(directory.relative_to(TF_DIR)))
        files = sorted(directory.glob("*.tf"))
        assert files, f"no .tf files in {directory}"
        for path in files:
            with path.open() as fh:
                parsed = _clean(hcl2.load(fh))
            for block in parsed.get("variable", []):
                config.variables.update(block)
            for block in parsed.get("locals", []):
                config.locals.update(block)
            for block in parsed.get("module", []):
                config.modules.update(block)
            for block in parsed.get("output", []):
                config.outputs.update(block)
            for block in parsed.get("resource", []):
                for rtype, named in block.items():
                    for rname, body in named.items():
                        config.resources[f"{rtype}.{rname}"] = body
        return config


@dataclass
class Found:
    """A value and how it was reached: one line per step, for the failure message."""

    value: Any
    trail: list[str]

    def explain(self) -> str:
        return "\n".join(f"    {step}" for step in self.trail)


class Tree:
    """The production root and the modules it calls."""

    def __init__(self) -> None:
        self.root = Config.load(PRODUCTION)
        self.modules: dict[str, Config] = {}  # by the root's module call name
        for call, body in self.root.modules.items():
            source = _unquote(body["source"])
            self.modules[call] = Config.load((PRODUCTION / source).resolve())

    def config(self, where: str | None) -> Config:
        return self.root if where is None else self.modules[where]

    def configs(self) -> list[tuple[str | None, Config]]:
        return [(None, self.root), *self.modules.items()]

    def resolve(self, where: str | None, expr: Any, trail: list[str]) -> Any:
        """The value of `expr` in module call `where` (None: the root). References to
        variables, locals, module outputs and a resource's own arguments are followed;
        anything else (a function call, a computed attribute such as .arn) is returned as
        its text, "${...}"."""
        if isinstance(expr, list):
            return [self.resolve(where, e, trail) for e in expr]
        if isinstance(expr, dict):
            return {k: self.resolve(where, v, trail) for k, v in expr.items()}
        if not isinstance(expr, str):
            return expr  # number, bool, null
        if (whole := REF.fullmatch(expr)) is not None:
            return self._reference(where, whole[1], trail)
        if (choice := CONDITIONAL.fullmatch(expr)) is not None:
            operand, comparison, if_true, if_false = choice.groups()
            value = self._operand(where, operand, trail)
            test = value is not None if comparison == "!=" else value is None
            chosen = if_true if (test if comparison else value is True) else if_false
            trail.append(f"{self.config(where).name}: {expr} -> {chosen}")
            return self._operand(where, chosen, trail)
        if len(expr) >= 2 and expr[0] == expr[-1] == '"':  # a string, maybe a template
            return REF.sub(lambda m: str(self._reference(where, m[1], trail)), expr[1:-1])
        return expr

    def _operand(self, where: str | None, operand: str, trail: list[str]) -> Any:
        return None if operand == "null" else self._reference(where, operand, trail)

    def _reference(self, where: str | None, path: str, trail: list[str]) -> Any:
        config = self.config(where)
        kind, name, *rest = path.split(".")
        name = name.removesuffix("[0]")  # a module or resource with count
        if kind == "local" and not rest:
            expr = config.locals[name]
            trail.append(f"{config.name}: local.{name} = {expr}")
            return self.resolve(where, expr, trail)
        if kind == "var" and not rest:
            if where is not None and name in self.root.modules[where]:
                expr = self.root.modules[where][name]
                trail.append(f"{self.root.name}: module.{where}.{name} = {expr}")
                return self.resolve(None, expr, trail)
            spec = config.variables[name]
            if "default" not in spec:
                trail.append(f"{config.name}: variable {name} is required (no default)")
                return f"<required var.{name}>"
            trail.append(f"{config.name}: variable {name} default = {spec['default']}")
            return self.resolve(where, spec["default"], trail)
        if kind == "module" and where is None and len(rest) == 1 and name in self.modules:
            expr = self.modules[name].outputs[rest[0]]["value"]
            trail.append(f"{self.modules[name].name}: output {rest[0]} = {expr}")
            return self.resolve(name, expr, trail)
        body = config.resources.get(f"{kind}.{name}", {})
        if len(rest) == 1 and rest[0] in body:
            expr = body[rest[0]]
            trail.append(f"{config.name}: {path} = {expr}")
            return self.resolve(where, expr, trail)
        return f"${{{path}}}"

    def attribute(self, where: str | None, address: str, path: str) -> Found:
        """The value of a resource's attribute; `path` goes into nested blocks with dots."""
        config = self.config(where)
        value: Any = config.resources[address]
        for part in path.split("."):
            if isinstance(value, list) and len(value) == 1:
                value = value[0]  # a block
            assert isinstance(value, dict) and part in value, (
                f"{config.name}: {address} has no {path} (missing at {part!r})"
            )
            value = value[part]
        trail = [f"{config.name}: {address}.{path} = {value}"]
        return Found(self.resolve(where, value, trail), trail)

    def named(self, rtype: str, name: str, attr: str = "name") -> tuple[str | None, str]:
        """The (module call, address) of the one `rtype` resource whose `attr` is `name`."""
        matches, seen = [], []
        for where, config in self.configs():
            for address, body in config.resources.items():
                if address.split(".")[0] != rtype or attr not in body:
                    continue
                value = self.resolve(where, body[attr], [])
                seen.append(f"{config.name}: {address}.{attr} = {value!r}")
                if value == name:
                    matches.append((where, address))
        assert len(matches) == 1, (
            f"expected exactly one {rtype} with {attr} = {name!r}, found {len(matches)}; "
            "the runbook cites that name. The configuration has:\n    "
            + ("\n    ".join(seen) or "(none)")
        )
        return matches[0]


@cache
def _tree() -> Tree:
    return Tree()


@pytest.fixture(scope="module")
def tree() -> Tree:
    return _tree()


# ======================================================================= the checks

# (rtype, the name the runbook cites, [(attribute path, expected value)])
NAMED: list[tuple[str, str, list[tuple[str, Any]]]] = [
    ("aws_ecs_cluster", "claude-proxy-cluster", []),
    # Provider 5.x replaces the service on a capacity provider strategy change (Fargate
    # Spot on or off) unless force_new_deployment is set.
    ("aws_ecs_service", "claude-proxy-service", [("force_new_deployment", True)]),
    ("aws_cloudwatch_log_group", "/ecs/claude-proxy-service", []),
    ("aws_lb", "claude-proxy-alb", [("load_balancer_type", "application"), ("idle_timeout", 300)]),
    (
        "aws_lb_target_group",
        "claude-proxy-tg",
        [
            ("health_check.path", "/health"),
            ("health_check.matcher", "200"),
            ("health_check.interval", 10),
            ("health_check.healthy_threshold", 2),
            ("health_check.unhealthy_threshold", 3),
            ("deregistration_delay", 900),
        ],
    ),
    ("aws_security_group", "claude-proxy-alb-sg", []),
    ("aws_security_group", "claude-proxy-task-sg", []),
    (
        "aws_appautoscaling_policy",
        "claude-proxy-cpu-target",
        [
            ("policy_type", "TargetTrackingScaling"),
            (
                "target_tracking_scaling_policy_configuration.predefined_metric_specification"
                ".predefined_metric_type",
                "ECSServiceAverageCPUUtilization",
            ),
            ("target_tracking_scaling_policy_configuration.target_value", 70),
            ("target_tracking_scaling_policy_configuration.scale_out_cooldown", 60),
            ("target_tracking_scaling_policy_configuration.scale_in_cooldown", 300),
        ],
    ),
    ("aws_sns_topic", "claude-proxy-alarms", []),
    ("aws_budgets_budget", "claude-proxy-monthly", []),
    (
        "aws_ecr_repository",
        "claude-proxy",
        [
            ("image_tag_mutability", "IMMUTABLE"),
            ("image_scanning_configuration.scan_on_push", True),
        ],
    ),
]

# alarm name -> threshold; every alarm: GreaterThanThreshold, notifying claude-proxy-alarms.
ALARMS = {
    "claude-proxy-target-5xx-rate": 1,  # percent of the requests
    "claude-proxy-proxy-errors": 1,  # percent of the requests
    "claude-proxy-elb-5xx": 10,
    "claude-proxy-cpu-high": 85,
    "claude-proxy-memory-high": 85,
    "claude-proxy-unhealthy-hosts": 0,
}


def _check(tree: Tree, where: str | None, address: str, path: str, expected: Any) -> None:
    found = tree.attribute(where, address, path)
    assert found.value == expected, (
        f"{address}.{path}: the runbook says {expected!r}, the configuration gives "
        f"{found.value!r}:\n{found.explain()}"
    )


@pytest.mark.parametrize(
    ("rtype", "name", "attributes"), NAMED, ids=[f"{t}:{n}" for t, n, _ in NAMED]
)
def test_named_resource(
    tree: Tree, rtype: str, name: str, attributes: list[tuple[str, Any]]
) -> None:
    where, address = tree.named(rtype, name)
    for path, expected in attributes:
        _check(tree, where, address, path, expected)


def test_autoscaling_between_2_and_10_tasks(tree: Tree) -> None:
    where, address = tree.named(
        "aws_appautoscaling_target", "ecs:service:DesiredCount", "scalable_dimension"
    )
    _check(tree, where, address, "min_capacity", 2)
    _check(tree, where, address, "max_capacity", 10)
    resource_id = tree.attribute(where, address, "resource_id")
    assert resource_id.value == "service/claude-proxy-cluster/claude-proxy-service", (
        f"the scalable target is not the service:\n{resource_id.explain()}"
    )


@pytest.mark.parametrize(("name", "threshold"), ALARMS.items(), ids=list(ALARMS))
def test_alarm(tree: Tree, name: str, threshold: int) -> None:
    where, address = tree.named("aws_cloudwatch_metric_alarm", name, "alarm_name")
    _check(tree, where, address, "threshold", threshold)
    _check(tree, where, address, "comparison_operator", "GreaterThanThreshold")
    topic_where, topic = tree.named("aws_sns_topic", "claude-proxy-alarms")
    assert topic_where == where, f"{name} and the claude-proxy-alarms topic: different modules"
    for actions in ("alarm_actions", "ok_actions"):
        found = tree.attribute(where, address, actions)
        assert found.value == [f"${{{topic}.arn}}"], (
            f"{name}.{actions} must be [{topic}.arn] (claude-proxy-alarms), "
            f"is {found.value!r}:\n{found.explain()}"
        )


def test_target_5xx_rate_is_a_percentage(tree: Tree) -> None:
    """The threshold 1 means 1 %: the alarm's returned series is 100 * 5xx / requests."""
    where, address = tree.named(
        "aws_cloudwatch_metric_alarm", "claude-proxy-target-5xx-rate", "alarm_name"
    )
    queries = tree.attribute(where, address, "metric_query").value
    returned = [q for q in queries if q.get("return_data") is True]
    assert len(returned) == 1, f"one metric_query must return data: {queries}"
    expression = returned[0].get("expression", "")
    assert re.match(r"^100\s*\*", expression), f"not a percentage: {expression!r}"
    metrics = {q["id"]: q["metric"][0]["metric_name"] for q in queries if q.get("metric")}
    assert set(metrics.values()) == {"HTTPCode_Target_5XX_Count", "RequestCount"}, metrics
    assert all(ident in expression for ident in metrics), (expression, metrics)


def test_proxy_errors_is_a_percentage_of_the_proxys_own_failures(tree: Tree) -> None:
    """The deployment's rollback alarm: 100 * ProxyErrors / RequestCount of the proxy's EMF
    lines (src/claude_proxy/telemetry/emf.py: namespace ClaudeProxy, dimension ServiceName),
    nothing of the ALB, whose target 5xx count the upstream's 5xx and 529."""
    from claude_proxy.settings import Settings
    from claude_proxy.telemetry import emf

    where, address = tree.named(
        "aws_cloudwatch_metric_alarm", "claude-proxy-proxy-errors", "alarm_name"
    )
    queries = tree.attribute(where, address, "metric_query").value
    returned = [q for q in queries if q.get("return_data") is True]
    assert len(returned) == 1, f"one metric_query must return data: {queries}"
    expression = returned[0].get("expression", "")
    assert re.match(r"^100\s*\*", expression), f"not a percentage: {expression!r}"
    metrics = {q["id"]: q["metric"][0] for q in queries if q.get("metric")}
    assert {m["metric_name"] for m in metrics.values()} == {"ProxyErrors", "RequestCount"}
    assert {"ProxyErrors", "RequestCount"} <= set(emf.COUNTERS), emf.COUNTERS
    assert all(ident in expression for ident in metrics), (expression, metrics)
    namespace = Settings.model_fields["emf_namespace"].default
    for metric in metrics.values():
        assert metric["namespace"] == namespace, metric
        assert metric["dimensions"] == {emf.DIMENSION: "claude-proxy-service"}, metric
        assert metric["stat"] == "Sum", metric


def test_only_the_proxy_errors_alarm_rolls_a_deployment_back(tree: Tree) -> None:
    """An Anthropic outage during a deployment (upstream 5xx, 529) must not roll a good
    release back: the service's deployment alarms are the proxy-errors alarm only."""
    where, service = tree.named("aws_ecs_service", "claude-proxy-service")
    body = tree.config(where).resources[service]
    (alarms,) = [d["alarms"] for d in body.get("dynamic", []) if "alarms" in d]
    assert "var.deployment_alarm_names" in alarms["for_each"], alarms
    (content,) = alarms["content"]
    assert content["alarm_names"] == "${alarms.value}", content
    assert content["rollback"] is True and content["enable"] is True, content
    trail: list[str] = []
    passed = tree.resolve(where, "${var.deployment_alarm_names}", trail)
    assert passed == ["claude-proxy-proxy-errors"], (
        "the service's deployment alarms must be claude-proxy-proxy-errors alone:\n"
        + "\n".join(trail)
    )


# checkov's encryption checks (CKV_AWS_158 log group, CKV_AWS_26 topic, CKV_AWS_184 file
# system) pass on an attribute set to a variable whose default is null: checkov does not see
# through it. What these attributes hold by default must be a customer-managed key.
ENCRYPTED = [  # (rtype, the name the runbook cites, its name attribute, the key attribute)
    ("aws_cloudwatch_log_group", "/ecs/claude-proxy-service", "name", "kms_key_id"),
    ("aws_sns_topic", "claude-proxy-alarms", "name", "kms_master_key_id"),
    ("aws_efs_file_system", "claude-proxy-spill", "creation_token", "kms_key_id"),
]


@pytest.mark.parametrize(
    ("rtype", "name", "name_attribute", "key_attribute"), ENCRYPTED, ids=[e[1] for e in ENCRYPTED]
)
def test_encrypted_with_the_customer_managed_key_by_default(
    tree: Tree, rtype: str, name: str, name_attribute: str, key_attribute: str
) -> None:
    where, address = tree.named(rtype, name, name_attribute)
    found = tree.attribute(where, address, key_attribute)
    assert found.value == "${aws_kms_key.this.arn}", (
        f"{address}.{key_attribute} is {found.value!r} by default, not the customer-managed "
        f"key (checkov passes it all the same):\n{found.explain()}"
    )
    keys = [
        (config.name, address, body.get("enable_key_rotation"))
        for _, config in tree.configs()
        for address, body in config.resources.items()
        if address.startswith("aws_kms_key.")
    ]
    assert keys == [("modules/kms", "aws_kms_key.this", True)], keys


def test_budget_is_on_by_default(tree: Tree) -> None:
    where, address = tree.named("aws_budgets_budget", "claude-proxy-monthly")
    count = tree.config(where).resources[address].get("count")
    if count is not None:
        match = re.fullmatch(r"\$\{var\.(\w+) \? 1 : 0\}", count)
        assert match, f"{address}: count = {count}: expected var.<flag> ? 1 : 0"
        trail: list[str] = []
        enabled = tree.resolve(where, f"${{var.{match[1]}}}", trail)
        assert enabled is True, "the budget is off by default:\n" + "\n".join(trail)


def test_task_definition_revisions_stay_active(tree: Tree) -> None:
    """The runbook's rollback points the service at an earlier revision: a new one must not
    deregister it (skip_destroy)."""
    where, address = tree.named("aws_ecs_task_definition", "claude-proxy", "family")
    _check(tree, where, address, "skip_destroy", True)


def test_deregistration_delay_outlasts_every_idle_timeout(tree: Tree) -> None:
    """At least 600 s (at most 3600) by the root's validation, and above the ALB's idle
    timeout (a precondition of the alb module says so too)."""
    spec = tree.root.variables["deregistration_delay"]
    condition = spec["validation"][0]["condition"]
    assert re.search(r"var\.deregistration_delay >= 600\b", condition), condition
    assert re.search(r"var\.deregistration_delay <= 3600\b", condition), condition
    where, tg = tree.named("aws_lb_target_group", "claude-proxy-tg")
    preconditions = tree.config(where).resources[tg]["lifecycle"][0]["precondition"]
    assert any(
        p["condition"] == "${var.deregistration_delay > var.idle_timeout}" for p in preconditions
    ), preconditions
    delay = tree.attribute(where, tg, "deregistration_delay").value
    lb_where, lb = tree.named("aws_lb", "claude-proxy-alb")
    idle = tree.attribute(lb_where, lb, "idle_timeout").value
    # The app's own idle timeouts: literals of the container's environment.
    ecs_where, _ = tree.named("aws_ecs_service", "claude-proxy-service")
    environment = tree.config(ecs_where).locals["environment"]
    app = dict(re.findall(r"(CLAUDE_PROXY_\w+)\s*=\s*\"(\d+)\"", environment))
    keepalive = int(app["CLAUDE_PROXY_KEEPALIVE_SECONDS"])
    upstream_idle = int(app["CLAUDE_PROXY_IDLE_TIMEOUT_SECONDS"])
    assert 600 <= delay <= 3600, delay
    assert delay > max(idle, keepalive, upstream_idle), (delay, idle, keepalive, upstream_idle)


def test_spill_efs_is_optional_encrypted_and_reached_from_the_tasks_only(tree: Tree) -> None:
    spec = tree.root.variables["enable_spill_efs"]
    assert spec["default"] is False, "the spill file system is off by default"
    call = tree.root.modules["spill_efs"]
    assert call["count"] == "${var.enable_spill_efs ? 1 : 0}", call["count"]
    efs = tree.config("spill_efs")
    fs = efs.resources["aws_efs_file_system.this"]
    assert fs["encrypted"] is True, fs
    task_sg, efs_sg = "${aws_security_group.task.id}", "${aws_security_group.efs.id}"
    rules = {a: b for a, b in efs.resources.items() if a.startswith("aws_vpc_security_group_")}
    assert sorted(rules) == [
        "aws_vpc_security_group_egress_rule.task_to_nfs",
        "aws_vpc_security_group_ingress_rule.nfs_from_tasks",
    ], sorted(rules)
    for address in rules:
        assert "cidr_ipv4" not in rules[address] and "cidr_ipv6" not in rules[address], address
        for port in ("from_port", "to_port"):
            _check(tree, "spill_efs", address, port, 2049)
    ingress = "aws_vpc_security_group_ingress_rule.nfs_from_tasks"
    _check(tree, "spill_efs", ingress, "security_group_id", efs_sg)
    _check(tree, "spill_efs", ingress, "referenced_security_group_id", task_sg)
    egress = "aws_vpc_security_group_egress_rule.task_to_nfs"
    _check(tree, "spill_efs", egress, "security_group_id", task_sg)
    _check(tree, "spill_efs", egress, "referenced_security_group_id", efs_sg)
    mount = efs.resources["aws_efs_mount_target.this"]
    assert mount["security_groups"] == [efs_sg], mount

    where, _ = tree.named("aws_ecs_service", "claude-proxy-service")
    task = tree.config(where).resources["aws_ecs_task_definition.this"]
    (spill,) = [v for v in task["volume"] if v["name"] == '"spill"']
    (dynamic,) = spill["dynamic"]
    (content,) = dynamic["efs_volume_configuration"]["content"]
    assert content["transit_encryption"] == '"ENABLED"', content
    assert content["authorization_config"][0]["iam"] == '"ENABLED"', content


# ------------------------------------------------------------- the container (text)


def _app_container(tree: Tree) -> tuple[str | None, str]:
    """The ECS module call and the text of the app container's definition: the task
    definition's container_definitions, through locals, down to the first element of
    the concat() (python-hcl2 keeps function calls as text)."""
    where, service = tree.named("aws_ecs_service", "claude-proxy-service")
    config = tree.config(where)
    task_def = config.resources[service]["task_definition"]
    match = re.fullmatch(r"\$\{(aws_ecs_task_definition\.\w+)\.arn\}", task_def)
    assert match, f"{service}.task_definition = {task_def}: expected a task definition's arn"
    expr = config.resources[match[1]]["container_definitions"]
    for _ in range(5):  # follow jsonencode(local.x), concat([local.y], ...), local.z
        ref = re.match(r"^\$\{(?:jsonencode\(|concat\(\[)?local\.(\w+)", expr)
        if not ref:
            break
        expr = config.locals[ref[1]]
    assert isinstance(expr, str) and "stopTimeout" in expr, (
        f"could not follow container_definitions of {match[1]} to the app container: {expr}"
    )
    return where, expr


def test_container_stop_timeout_and_init_process(tree: Tree) -> None:
    _, text = _app_container(tree)
    assert re.findall(r"\bstopTimeout\s*=\s*(\w+)", text) == ["120"], (
        f"the app container needs stopTimeout = 120 (once):\n{text}"
    )
    assert re.findall(r"\binitProcessEnabled\s*=\s*(\w+)", text) == ["true"], (
        f"the app container needs linuxParameters = {{ initProcessEnabled = true }}:\n{text}"
    )


def test_container_secrets(tree: Tree) -> None:
    """The three required secrets and the three optional ones (sign-in, budget alerts):
    names the root maps to secret-ARN variables (required, or null by default), the
    optional ones kept only when set, handed to the container as valueFrom and to the
    execution role, nothing else."""
    for local, names, required in (
        ("required_secrets", SECRETS, True),
        ("optional_secrets", OPTIONAL_SECRETS, False),
    ):
        secrets = tree.root.locals.get(local)
        assert isinstance(secrets, dict), f"environments/production: local.{local} is a map"
        assert sorted(secrets) == sorted(names), f"local.{local}: {sorted(secrets)}"
        for name, expr in secrets.items():
            ref = re.fullmatch(r"\$\{var\.(\w+)\}", expr)
            assert ref, f"local.{local}.{name} = {expr}: expected a variable"
            spec = tree.root.variables[ref[1]]
            if required:
                assert "default" not in spec, f"var.{ref[1]} ({name}) must be required"
            else:
                assert "default" in spec and spec["default"] is None, (
                    f"var.{ref[1]} ({name}) must be optional, null by default"
                )
            assert "secretsmanager" in str(spec.get("validation")), (
                f"var.{ref[1]} ({name}) must be validated as a Secrets Manager ARN"
            )
    merged = tree.root.locals.get("secrets", "")
    assert re.sub(r"\s+", "", merged) == (
        "${merge(local.required_secrets,{forname,arninlocal.optional_secrets:"
        "name=>arnifarn!=null})}"
    ), f"local.secrets: the required secrets and the optional ones that are set: {merged}"

    where, text = _app_container(tree)
    assert where is not None, "the ECS service is in a module"
    assert tree.root.modules[where].get("secrets") == "${local.secrets}", (
        f"module.{where} must get secrets = local.secrets"
    )
    assert re.search(
        r"\bsecrets\s*=\s*\[for (\w+) in sort\(keys\(var\.secrets\)\) : "
        r"\{name = \1, valueFrom = var\.secrets\[\1\]\}\]",
        text,
    ), f"the app container must list var.secrets as name/valueFrom pairs:\n{text}"

    granted = [
        f"module.{call}.{arg}"
        for call, body in tree.root.modules.items()
        for arg, value in body.items()
        if value == "${values(local.secrets)}"
    ]
    assert granted == ["module.iam.secret_arns"], (
        "the execution role (module.iam) must get secret_arns = values(local.secrets), the "
        f"secrets and no others; module arguments given values(local.secrets): {granted}"
    )


def test_no_secret_in_the_plain_environment(tree: Tree) -> None:
    """Neither extra_environment nor the sign-in settings (app_environment) may carry a
    secret's name: a secret in the plain environment would be in the plan, the state and
    the task definition for anyone to read."""
    where, _ = _app_container(tree)
    assert where is not None
    ecs = tree.config(where)
    for variable in ("extra_environment", "app_environment"):
        condition = ecs.variables[variable]["validation"][0]["condition"]
        for name in (*SECRETS, *OPTIONAL_SECRETS):
            assert f'"{name}"' in condition, f"{where}: var.{variable} may name {name}"
    app_environment = tree.root.locals["app_environment"]
    for name in (*SECRETS, *OPTIONAL_SECRETS):
        assert name not in app_environment, f"local.app_environment sets {name}"


def test_log_group_is_the_containers(tree: Tree) -> None:
    where, address = tree.named("aws_cloudwatch_log_group", "/ecs/claude-proxy-service")
    _, text = _app_container(tree)
    config = tree.config(where)
    log_configuration = re.search(r"logConfiguration\s*=\s*local\.(\w+)", text)
    assert log_configuration, f"the app container has no logConfiguration = local.x:\n{text}"
    options = config.locals[log_configuration[1]]["options"]
    assert options["awslogs-group"] == f"${{{address}.name}}", options
