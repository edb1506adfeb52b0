# The production root with its defaults, planned against a mocked AWS provider (no
# credentials, no network): the names and values the runbook cites.
#   terraform init -backend=false && terraform test

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  aws_region                   = "eu-west-1"
  certificate_arn              = "arn:aws:acm:eu-west-1:123456789012:certificate/0b5c5d1e-1234-4abc-9def-0123456789ab"
  container_image              = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/claude-proxy:v1.4.2"
  anthropic_api_key_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:claude-proxy/anthropic-api-key-AbCdEf"
  database_url_secret_arn      = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:claude-proxy/database-url-GhIjKl"
  admin_key_secret_arn         = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:claude-proxy/admin-key-MnOpQr"
}

run "defaults" {
  command = plan

  ##############################################################################
  # Names and outputs
  ##############################################################################

  assert {
    condition     = output.cluster_name == "claude-proxy-cluster"
    error_message = "The ECS cluster is claude-proxy-cluster."
  }

  assert {
    condition     = output.service_name == "claude-proxy-service"
    error_message = "The ECS service is claude-proxy-service."
  }

  assert {
    condition     = output.task_definition_family == "claude-proxy"
    error_message = "The task family is claude-proxy."
  }

  assert {
    condition     = output.log_group_name == "/ecs/claude-proxy-service"
    error_message = "The log group is /ecs/claude-proxy-service."
  }

  assert {
    condition     = output.alb_dns_name == "claude-proxy-alb-1234567890.eu-west-1.elb.amazonaws.com"
    error_message = "alb_dns_name is the load balancer's DNS name."
  }

  assert {
    condition     = output.ecr_repository_url == "123456789012.dkr.ecr.eu-west-1.amazonaws.com/claude-proxy"
    error_message = "ecr_repository_url is the repository's URL."
  }

  assert {
    condition     = module.ecr.repository_name == "claude-proxy"
    error_message = "The ECR repository is claude-proxy."
  }

  assert {
    condition     = output.sns_topic_arn == "arn:aws:sns:eu-west-1:123456789012:claude-proxy-alarms" && module.alarms.sns_topic_name == "claude-proxy-alarms"
    error_message = "The alarm topic is claude-proxy-alarms."
  }

  ##############################################################################
  # Network
  ##############################################################################

  assert {
    condition     = module.network.vpc_cidr_block == "10.0.0.0/16"
    error_message = "The VPC is 10.0.0.0/16 by default."
  }

  assert {
    condition     = length(module.network.public_subnet_ids) == 2 && length(module.network.private_subnet_ids) == 2
    error_message = "Two AZs by default: two public and two private subnets."
  }

  assert {
    condition     = module.network.availability_zones == tolist(["eu-west-1a", "eu-west-1b"])
    error_message = "The subnets take the first az_count available AZs."
  }

  assert {
    condition     = tolist(module.network.public_subnet_cidrs) == tolist(["10.0.0.0/20", "10.0.16.0/20"]) && tolist(module.network.private_subnet_cidrs) == tolist(["10.0.128.0/20", "10.0.144.0/20"])
    error_message = "Subnet layout: public /20s from 10.0.0.0, private /20s from 10.0.128.0."
  }

  assert {
    condition     = length(module.network.nat_gateway_ids) == 2
    error_message = "One NAT gateway per AZ by default."
  }

  assert {
    condition     = module.network.flow_log == null && module.alb.waf_web_acl_arn == null
    error_message = "No flow logs and no WAF by default."
  }

  assert {
    condition     = length(module.network.interface_endpoint_ids) == 0 && module.network.endpoints_security_group_id == null
    error_message = "No interface endpoints by default."
  }

  ##############################################################################
  # Security groups
  ##############################################################################

  assert {
    condition     = module.security.alb_security_group_name == "claude-proxy-alb-sg" && module.security.task_security_group_name == "claude-proxy-task-sg"
    error_message = "The security groups are claude-proxy-alb-sg and claude-proxy-task-sg."
  }

  assert {
    condition = (
      toset([for r in module.security.alb_ingress_rules : "${r.ip_protocol}/${r.from_port}-${r.to_port}/${r.cidr_ipv4}"])
      == toset(["tcp/80-80/0.0.0.0/0", "tcp/443-443/0.0.0.0/0"])
    )
    error_message = "The ALB accepts exactly 80 and 443 from 0.0.0.0/0."
  }

  assert {
    condition = (
      length(module.security.alb_egress_rules) == 1 &&
      module.security.alb_egress_rules[0].ip_protocol == "tcp" &&
      module.security.alb_egress_rules[0].from_port == 8000 &&
      module.security.alb_egress_rules[0].to_port == 8000 &&
      module.security.alb_egress_rules[0].referenced_security_group_id == "sg-0f9e8d7c6b5a4f9e8" &&
      module.security.alb_egress_rules[0].cidr_ipv4 == null &&
      module.security.alb_egress_rules[0].security_group_id == "sg-0a1b2c3d4e5f00a1b"
    )
    error_message = "The ALB may send only tcp 8000, only to the task security group."
  }

  assert {
    condition = (
      length(module.security.task_ingress_rules) == 1 &&
      module.security.task_ingress_rules[0].ip_protocol == "tcp" &&
      module.security.task_ingress_rules[0].from_port == 8000 &&
      module.security.task_ingress_rules[0].to_port == 8000 &&
      module.security.task_ingress_rules[0].referenced_security_group_id == "sg-0a1b2c3d4e5f00a1b" &&
      module.security.task_ingress_rules[0].cidr_ipv4 == null &&
      module.security.task_ingress_rules[0].security_group_id == "sg-0f9e8d7c6b5a4f9e8"
    )
    error_message = "The tasks accept only tcp 8000, only from the ALB security group."
  }

  assert {
    condition = (
      toset([for r in module.security.task_egress_rules : "${r.ip_protocol}/${r.from_port}-${r.to_port}/${r.cidr_ipv4}"])
      == toset(["tcp/443-443/0.0.0.0/0", "tcp/5432-5432/0.0.0.0/0", "tcp/6543-6543/0.0.0.0/0"])
    )
    error_message = "The tasks may send only 443, 5432 and 6543 (database_cidr_blocks defaults to 0.0.0.0/0)."
  }

  assert {
    condition = alltrue([
      for r in concat(module.security.alb_ingress_rules, module.security.alb_egress_rules, module.security.task_ingress_rules, module.security.task_egress_rules) :
      r.description != null && r.description != ""
    ])
    error_message = "Every security group rule has a description."
  }

  ##############################################################################
  # Load balancer
  ##############################################################################

  assert {
    condition = (
      module.alb.load_balancer.name == "claude-proxy-alb" &&
      module.alb.load_balancer.load_balancer_type == "application" &&
      module.alb.load_balancer.internal == false &&
      module.alb.load_balancer.security_groups == toset(["sg-0a1b2c3d4e5f00a1b"])
    )
    error_message = "claude-proxy-alb is an internet-facing application load balancer in claude-proxy-alb-sg."
  }

  assert {
    condition     = module.alb.load_balancer.idle_timeout == 300
    error_message = "ALB idle timeout is 300 s (below the app's 310 s keep-alive)."
  }

  assert {
    condition     = module.alb.load_balancer.drop_invalid_header_fields == true
    error_message = "drop_invalid_header_fields is on."
  }

  assert {
    condition     = length(module.alb.load_balancer.access_logs) == 0
    error_message = "No access logs unless alb_access_logs_bucket is set."
  }

  assert {
    condition = (
      module.alb.listeners.https.port == 443 &&
      module.alb.listeners.https.protocol == "HTTPS" &&
      module.alb.listeners.https.ssl_policy == "ELBSecurityPolicy-TLS13-1-2-2021-06" &&
      module.alb.listeners.https.certificate_arn == var.certificate_arn &&
      module.alb.listeners.https.default_action[0].type == "forward" &&
      module.alb.listeners.https.default_action[0].target_group_arn == "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/claude-proxy-tg/73e2d6bc24d8a067"
    )
    error_message = "HTTPS 443 with the TLS 1.3/1.2 policy and the certificate, forwarding to claude-proxy-tg."
  }

  assert {
    condition = (
      module.alb.listeners.http.port == 80 &&
      module.alb.listeners.http.protocol == "HTTP" &&
      module.alb.listeners.http.default_action[0].type == "redirect" &&
      module.alb.listeners.http.default_action[0].redirect[0].protocol == "HTTPS" &&
      module.alb.listeners.http.default_action[0].redirect[0].port == "443" &&
      module.alb.listeners.http.default_action[0].redirect[0].status_code == "HTTP_301"
    )
    error_message = "HTTP 80 redirects to HTTPS 443 with a 301."
  }

  assert {
    condition = (
      module.alb.target_group.name == "claude-proxy-tg" &&
      module.alb.target_group.target_type == "ip" &&
      module.alb.target_group.protocol == "HTTP" &&
      module.alb.target_group.port == 8000 &&
      module.alb.target_group.load_balancing_algorithm_type == "least_outstanding_requests"
    )
    error_message = "claude-proxy-tg: ip targets, HTTP 8000, least outstanding requests."
  }

  assert {
    condition     = tonumber(module.alb.target_group.deregistration_delay) == 900
    error_message = "Deregistration delay is 900 s: a deployment lets streams of up to 15 minutes finish."
  }

  assert {
    condition = (
      tonumber(module.alb.target_group.deregistration_delay) > module.alb.load_balancer.idle_timeout &&
      tonumber(module.alb.target_group.deregistration_delay) > tonumber({ for e in jsondecode(module.ecs.container_definitions)[0].environment : e.name => e.value }["CLAUDE_PROXY_KEEPALIVE_SECONDS"]) &&
      tonumber(module.alb.target_group.deregistration_delay) > tonumber({ for e in jsondecode(module.ecs.container_definitions)[0].environment : e.name => e.value }["CLAUDE_PROXY_IDLE_TIMEOUT_SECONDS"])
    )
    error_message = "The deregistration delay is above every idle timeout: the ALB's, the app's keep-alive and its upstream idle timeout."
  }

  assert {
    condition = (
      module.alb.target_group.health_check[0].enabled == true &&
      module.alb.target_group.health_check[0].path == "/health" &&
      module.alb.target_group.health_check[0].matcher == "200" &&
      module.alb.target_group.health_check[0].interval == 10 &&
      module.alb.target_group.health_check[0].timeout == 5 &&
      module.alb.target_group.health_check[0].healthy_threshold == 2 &&
      module.alb.target_group.health_check[0].unhealthy_threshold == 3
    )
    error_message = "Health check: /health, 200, every 10 s, timeout 5 s, healthy 2, unhealthy 3."
  }

  ##############################################################################
  # ECR
  ##############################################################################

  assert {
    condition = (
      module.ecr.repository.image_tag_mutability == "IMMUTABLE" &&
      module.ecr.repository.image_scanning_configuration[0].scan_on_push == true &&
      module.ecr.repository.encryption_configuration[0].encryption_type == "KMS"
    )
    error_message = "ECR: immutable tags, scan on push, KMS encryption."
  }

  assert {
    condition = (
      jsondecode(module.ecr.lifecycle_policy).rules[0].selection.tagStatus == "untagged" &&
      jsondecode(module.ecr.lifecycle_policy).rules[0].selection.countType == "sinceImagePushed" &&
      jsondecode(module.ecr.lifecycle_policy).rules[0].selection.countNumber == 7 &&
      jsondecode(module.ecr.lifecycle_policy).rules[1].selection.tagStatus == "any" &&
      jsondecode(module.ecr.lifecycle_policy).rules[1].selection.countType == "imageCountMoreThan" &&
      jsondecode(module.ecr.lifecycle_policy).rules[1].selection.countNumber == 30
    )
    error_message = "ECR lifecycle: untagged expire after 7 days, the last 30 images are kept."
  }

  ##############################################################################
  # ECS cluster, log group, task definition
  ##############################################################################

  assert {
    condition     = anytrue([for s in module.ecs.cluster.setting : s.name == "containerInsights" && s.value == "enabled"])
    error_message = "Container Insights is enabled on the cluster."
  }

  assert {
    condition     = module.ecs.cluster_capacity_providers == toset(["FARGATE", "FARGATE_SPOT"])
    error_message = "The cluster has the FARGATE and FARGATE_SPOT capacity providers."
  }

  assert {
    condition     = module.ecs.log_group.retention_in_days == 30
    error_message = "Logs are kept 30 days by default."
  }

  assert {
    condition = (
      module.ecs.task_definition.requires_compatibilities == toset(["FARGATE"]) &&
      module.ecs.task_definition.network_mode == "awsvpc" &&
      module.ecs.task_definition.cpu == "1024" &&
      module.ecs.task_definition.memory == "2048"
    )
    error_message = "Fargate, awsvpc, 1024 CPU, 2048 MiB."
  }

  assert {
    condition     = toset([for v in module.ecs.task_definition.volume : v.name]) == toset(["spill", "tmp"])
    error_message = "The task has the spill and tmp volumes."
  }

  assert {
    condition     = alltrue([for v in module.ecs.task_definition.volume : length(v.efs_volume_configuration) == 0]) && output.spill_file_system_id == null
    error_message = "Without enable_spill_efs the spill directory is on the task's ephemeral storage (no EFS)."
  }

  assert {
    condition     = length(jsondecode(module.ecs.container_definitions)) == 1
    error_message = "Only the app container without enable_adot."
  }

  assert {
    condition = (
      jsondecode(module.ecs.container_definitions)[0].name == "claude-proxy" &&
      jsondecode(module.ecs.container_definitions)[0].image == var.container_image &&
      jsondecode(module.ecs.container_definitions)[0].essential == true &&
      jsondecode(module.ecs.container_definitions)[0].portMappings[0].containerPort == 8000 &&
      jsondecode(module.ecs.container_definitions)[0].portMappings[0].protocol == "tcp"
    )
    error_message = "Container claude-proxy runs container_image and listens on 8000."
  }

  assert {
    condition     = jsondecode(module.ecs.container_definitions)[0].stopTimeout == 120
    error_message = "stopTimeout is 120 s (pre-stop 10 + drain 90 + flush 10 = 110 s fit)."
  }

  assert {
    condition = (
      sum([for name in ["CLAUDE_PROXY_PRE_STOP_SECONDS", "CLAUDE_PROXY_DRAIN_SECONDS", "CLAUDE_PROXY_LOG_FLUSH_TIMEOUT_SECONDS"] :
        tonumber({ for e in jsondecode(module.ecs.container_definitions)[0].environment : e.name => e.value }[name])
      ]) < jsondecode(module.ecs.container_definitions)[0].stopTimeout
    )
    error_message = "The task definition's pre-stop + drain + log flush stay under its stopTimeout."
  }

  assert {
    condition     = module.ecs.task_definition.skip_destroy == true
    error_message = "A new task definition revision leaves the previous ones ACTIVE (skip_destroy): the rollback targets."
  }

  assert {
    condition     = jsondecode(module.ecs.container_definitions)[0].linuxParameters.initProcessEnabled == true
    error_message = "initProcessEnabled is on."
  }

  assert {
    condition = (
      jsondecode(module.ecs.container_definitions)[0].restartPolicy.enabled == true &&
      jsondecode(module.ecs.container_definitions)[0].restartPolicy.ignoredExitCodes == [0] &&
      !can(jsondecode(module.ecs.container_definitions)[0].healthCheck)
    )
    error_message = "A crashed app restarts in place (keeping the spill volume); no container health check by default."
  }

  assert {
    condition     = jsondecode(module.ecs.container_definitions)[0].readonlyRootFilesystem == true
    error_message = "The root filesystem is read-only."
  }

  assert {
    condition = (
      toset([for m in jsondecode(module.ecs.container_definitions)[0].mountPoints : "${m.sourceVolume}:${m.containerPath}"])
      == toset(["spill:/var/lib/claude-proxy/spill", "tmp:/tmp"])
    )
    error_message = "spill is mounted at /var/lib/claude-proxy/spill and tmp at /tmp."
  }

  assert {
    condition = (
      { for s in jsondecode(module.ecs.container_definitions)[0].secrets : s.name => s.valueFrom } == {
        ANTHROPIC_API_KEY      = var.anthropic_api_key_secret_arn
        DATABASE_URL           = var.database_url_secret_arn
        CLAUDE_PROXY_ADMIN_KEY = var.admin_key_secret_arn
      }
    )
    error_message = "The secrets are ANTHROPIC_API_KEY, DATABASE_URL and CLAUDE_PROXY_ADMIN_KEY, from their ARNs."
  }

  assert {
    condition = (
      { for e in jsondecode(module.ecs.container_definitions)[0].environment : e.name => e.value } == {
        CLAUDE_PROXY_HOST                      = "0.0.0.0"
        CLAUDE_PROXY_PORT                      = "8000"
        CLAUDE_PROXY_EMF_ENABLED               = "true"
        CLAUDE_PROXY_SERVICE_NAME              = "claude-proxy-service"
        CLAUDE_PROXY_FORWARDED_ALLOW_IPS       = "10.0.0.0/16"
        CLAUDE_PROXY_KEEPALIVE_SECONDS         = "310"
        CLAUDE_PROXY_PRE_STOP_SECONDS          = "10"
        CLAUDE_PROXY_DRAIN_SECONDS             = "90"
        CLAUDE_PROXY_LOG_FLUSH_TIMEOUT_SECONDS = "10"
        CLAUDE_PROXY_IDLE_TIMEOUT_SECONDS      = "290"
        CLAUDE_PROXY_SPILL_DIR                 = "/var/lib/claude-proxy/spill"
        CLAUDE_PROXY_METRICS_DIR               = "/tmp/claude-proxy-metrics"
      }
    )
    error_message = "The app's environment is exactly the documented one (no tracing without enable_adot)."
  }

  assert {
    condition = (
      jsondecode(module.ecs.container_definitions)[0].logConfiguration.logDriver == "awslogs" &&
      jsondecode(module.ecs.container_definitions)[0].logConfiguration.options["awslogs-group"] == "/ecs/claude-proxy-service" &&
      jsondecode(module.ecs.container_definitions)[0].logConfiguration.options["awslogs-region"] == "eu-west-1" &&
      jsondecode(module.ecs.container_definitions)[0].logConfiguration.options["awslogs-stream-prefix"] == "claude-proxy"
    )
    error_message = "awslogs to /ecs/claude-proxy-service with stream prefix claude-proxy."
  }

  ##############################################################################
  # ECS service
  ##############################################################################

  assert {
    condition = (
      module.ecs.service.deployment_minimum_healthy_percent == 100 &&
      module.ecs.service.deployment_maximum_percent == 200
    )
    error_message = "Rolling deploys: minimum healthy 100 %, maximum 200 %."
  }

  assert {
    condition = (
      module.ecs.service.deployment_circuit_breaker[0].enable == true &&
      module.ecs.service.deployment_circuit_breaker[0].rollback == true
    )
    error_message = "The deployment circuit breaker rolls back."
  }

  assert {
    condition = (
      module.ecs.service.alarms[0].alarm_names == toset(["claude-proxy-proxy-errors"]) &&
      module.ecs.service.alarms[0].enable == true &&
      module.ecs.service.alarms[0].rollback == true
    )
    error_message = "The proxy-errors alarm, and it only (not the target 5xx rate, which upstream errors fire), rolls a deployment back."
  }

  assert {
    condition     = module.ecs.service.force_new_deployment == true
    error_message = "force_new_deployment is on: provider 5.x then changes the capacity provider strategy (Fargate Spot) in place instead of replacing the service."
  }

  assert {
    condition     = module.ecs.service.timeouts.update == "35m" && module.ecs.service.timeouts.delete == "35m"
    error_message = "The service's update and delete wait 20 minutes plus the 900 s deregistration delay."
  }

  assert {
    condition = (
      module.ecs.service.health_check_grace_period_seconds == 60 &&
      module.ecs.service.desired_count == 2 &&
      module.ecs.service.propagate_tags == "SERVICE" &&
      module.ecs.service.enable_execute_command == false
    )
    error_message = "Grace period 60 s, 2 tasks, tags propagated, no ECS Exec."
  }

  assert {
    condition = (
      length(module.ecs.service.capacity_provider_strategy) == 1 &&
      anytrue([for s in module.ecs.service.capacity_provider_strategy : s.capacity_provider == "FARGATE" && s.base == 2 && s.weight == 1])
    )
    error_message = "Capacity: FARGATE base 2 weight 1, no Spot by default."
  }

  assert {
    condition = (
      module.ecs.service.network_configuration[0].assign_public_ip == false &&
      module.ecs.service.network_configuration[0].security_groups == toset(["sg-0f9e8d7c6b5a4f9e8"])
    )
    error_message = "Tasks get no public IP and only the task security group."
  }

  assert {
    condition = anytrue([
      for lb in module.ecs.service.load_balancer :
      lb.container_name == "claude-proxy" && lb.container_port == 8000 &&
      lb.target_group_arn == "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/claude-proxy-tg/73e2d6bc24d8a067"
    ])
    error_message = "The service registers claude-proxy:8000 in claude-proxy-tg."
  }

  ##############################################################################
  # IAM
  ##############################################################################

  assert {
    condition     = module.iam.execution_role.name == "claude-proxy-execution" && module.iam.task_role.name == "claude-proxy-task"
    error_message = "The roles are claude-proxy-execution and claude-proxy-task."
  }

  assert {
    condition = alltrue([
      for role in [module.iam.execution_role, module.iam.task_role] :
      jsondecode(role.assume_role_policy).Statement[0].Principal.Service == "ecs-tasks.amazonaws.com" &&
      jsondecode(role.assume_role_policy).Statement[0].Condition.StringEquals["aws:SourceAccount"] == "123456789012" &&
      jsondecode(role.assume_role_policy).Statement[0].Condition.ArnLike["aws:SourceArn"] == "arn:aws:ecs:eu-west-1:123456789012:*"
    ])
    error_message = "Both roles trust ecs-tasks.amazonaws.com for this account and region only."
  }

  assert {
    condition = (
      [for s in jsondecode(module.iam.execution_role_policy).Statement : s.Sid] == ["EcrAuthorization", "EcrPull", "Logs", "Secrets"] &&
      alltrue([for s in jsondecode(module.iam.execution_role_policy).Statement : s.Effect == "Allow" && !can(s.Condition)])
    )
    error_message = "The execution role has exactly the ECR, logs and secrets statements (no KMS without secrets_kms_key_arn)."
  }

  assert {
    condition = (
      [for s in jsondecode(module.iam.execution_role_policy).Statement : s if s.Sid == "EcrAuthorization"][0].Resource == "*" &&
      toset([for s in jsondecode(module.iam.execution_role_policy).Statement : s if s.Sid == "EcrAuthorization"][0].Action) == toset(["ecr:GetAuthorizationToken"])
    )
    error_message = "Only ecr:GetAuthorizationToken is allowed on *."
  }

  assert {
    condition = (
      toset([for s in jsondecode(module.iam.execution_role_policy).Statement : s if s.Sid == "EcrPull"][0].Resource) == toset(["arn:aws:ecr:eu-west-1:123456789012:repository/claude-proxy"]) &&
      toset([for s in jsondecode(module.iam.execution_role_policy).Statement : s if s.Sid == "EcrPull"][0].Action) == toset(["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"])
    )
    error_message = "Image pulls are allowed from the claude-proxy repository only."
  }

  assert {
    condition = (
      toset([for s in jsondecode(module.iam.execution_role_policy).Statement : s if s.Sid == "Logs"][0].Resource) == toset([
        "arn:aws:logs:eu-west-1:123456789012:log-group:/ecs/claude-proxy-service",
        "arn:aws:logs:eu-west-1:123456789012:log-group:/ecs/claude-proxy-service:*",
      ]) &&
      toset([for s in jsondecode(module.iam.execution_role_policy).Statement : s if s.Sid == "Logs"][0].Action) == toset(["logs:CreateLogStream", "logs:PutLogEvents"])
    )
    error_message = "Logs may be written to /ecs/claude-proxy-service only."
  }

  assert {
    condition = (
      toset([for s in jsondecode(module.iam.execution_role_policy).Statement : s if s.Sid == "Secrets"][0].Resource) == toset([
        var.anthropic_api_key_secret_arn, var.database_url_secret_arn, var.admin_key_secret_arn,
      ]) &&
      toset([for s in jsondecode(module.iam.execution_role_policy).Statement : s if s.Sid == "Secrets"][0].Action) == toset(["secretsmanager:GetSecretValue"])
    )
    error_message = "secretsmanager:GetSecretValue on exactly the three secret ARNs."
  }

  assert {
    condition     = module.iam.task_role_policy == null
    error_message = "The task role has no permissions by default."
  }

  ##############################################################################
  # Encryption at rest: the customer-managed key
  ##############################################################################

  assert {
    condition = (
      module.kms[0].alias_name == "alias/claude-proxy" &&
      module.kms[0].key.enable_key_rotation == true &&
      output.kms_key_arn == "arn:aws:kms:eu-west-1:123456789012:key/0d6f1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
    )
    error_message = "The root creates the customer-managed key alias/claude-proxy, with automatic rotation."
  }

  assert {
    condition = (
      module.ecs.log_group.kms_key_id == output.kms_key_arn &&
      module.alarms.sns_topic.kms_master_key_id == output.kms_key_arn
    )
    error_message = "The log group and the alarm topic are encrypted with the customer-managed key by default (checkov's CKV_AWS_158 and CKV_AWS_26 hold for the defaults, not only for a key somebody passes)."
  }

  assert {
    condition = (
      [for s in jsondecode(module.kms[0].key_policy).Statement : s.Sid] == ["AccountAdministration", "CloudWatchLogs", "AlarmTopicPublishers"] &&
      [for s in jsondecode(module.kms[0].key_policy).Statement : s.Principal.Service if s.Sid == "CloudWatchLogs"][0] == "logs.eu-west-1.amazonaws.com" &&
      [for s in jsondecode(module.kms[0].key_policy).Statement : s.Condition.ArnEquals["kms:EncryptionContext:aws:logs:arn"] if s.Sid == "CloudWatchLogs"][0] == [
        "arn:aws:logs:eu-west-1:123456789012:log-group:/ecs/claude-proxy-service",
        "arn:aws:logs:eu-west-1:123456789012:log-group:/vpc/claude-proxy-flow-logs",
      ] &&
      toset([for s in jsondecode(module.kms[0].key_policy).Statement : s.Principal.Service if s.Sid == "AlarmTopicPublishers"][0]) == toset(["cloudwatch.amazonaws.com", "budgets.amazonaws.com"])
    )
    error_message = "The key policy lets CloudWatch Logs use the key for the two log groups only, and CloudWatch alarms and Budgets publish to the encrypted topic."
  }

  ##############################################################################
  # Autoscaling
  ##############################################################################

  assert {
    condition = (
      module.autoscaling.target.min_capacity == 2 &&
      module.autoscaling.target.max_capacity == 10 &&
      module.autoscaling.target.resource_id == "service/claude-proxy-cluster/claude-proxy-service" &&
      module.autoscaling.target.scalable_dimension == "ecs:service:DesiredCount"
    )
    error_message = "Autoscaling: 2 to 10 tasks of claude-proxy-service."
  }

  assert {
    condition = (
      module.autoscaling.cpu_policy.name == "claude-proxy-cpu-target" &&
      module.autoscaling.cpu_policy.policy_type == "TargetTrackingScaling" &&
      module.autoscaling.cpu_policy.target_tracking_scaling_policy_configuration[0].predefined_metric_specification[0].predefined_metric_type == "ECSServiceAverageCPUUtilization" &&
      module.autoscaling.cpu_policy.target_tracking_scaling_policy_configuration[0].target_value == 70 &&
      module.autoscaling.cpu_policy.target_tracking_scaling_policy_configuration[0].scale_out_cooldown == 60 &&
      module.autoscaling.cpu_policy.target_tracking_scaling_policy_configuration[0].scale_in_cooldown == 300
    )
    error_message = "claude-proxy-cpu-target: average CPU 70 %, scale out after 60 s, in after 300 s."
  }

  assert {
    condition     = module.autoscaling.active_streams_policy == null && output.autoscaling_policy_names == ["claude-proxy-cpu-target"]
    error_message = "No ActiveStreams scaling by default."
  }

  ##############################################################################
  # Alarms and budget
  ##############################################################################

  assert {
    condition = (
      output.alarm_names == {
        target_5xx_rate = "claude-proxy-target-5xx-rate"
        proxy_errors    = "claude-proxy-proxy-errors"
        elb_5xx         = "claude-proxy-elb-5xx"
        cpu_high        = "claude-proxy-cpu-high"
        memory_high     = "claude-proxy-memory-high"
        unhealthy_hosts = "claude-proxy-unhealthy-hosts"
      }
    )
    error_message = "The alarms are claude-proxy-target-5xx-rate, -proxy-errors, -elb-5xx, -cpu-high, -memory-high and -unhealthy-hosts."
  }

  assert {
    condition = alltrue([
      for a in values(module.alarms.alarms) :
      a.alarm_actions == toset(["arn:aws:sns:eu-west-1:123456789012:claude-proxy-alarms"]) &&
      a.ok_actions == toset(["arn:aws:sns:eu-west-1:123456789012:claude-proxy-alarms"])
    ])
    error_message = "Every alarm notifies claude-proxy-alarms (alarm and OK)."
  }

  assert {
    condition = (
      module.alarms.alarms.target_5xx_rate.comparison_operator == "GreaterThanThreshold" &&
      module.alarms.alarms.target_5xx_rate.threshold == 1 &&
      module.alarms.alarms.target_5xx_rate.evaluation_periods == 3 &&
      module.alarms.alarms.target_5xx_rate.datapoints_to_alarm == 3 &&
      module.alarms.alarms.target_5xx_rate.treat_missing_data == "notBreaching"
    )
    error_message = "Target 5xx rate: above 1 % in 3 of 3 minutes; missing data is not breaching."
  }

  assert {
    condition     = [for q in module.alarms.alarms.target_5xx_rate.metric_query : q.expression if q.return_data] == ["100 * FILL(errors, 0) / requests"]
    error_message = "The target 5xx rate alarm evaluates 100 * errors / requests."
  }

  assert {
    condition = toset(flatten([
      for q in module.alarms.alarms.target_5xx_rate.metric_query : [
        for m in q.metric : "${q.id}=${m.namespace}/${m.metric_name}/${m.stat}/${m.period}/${m.dimensions["LoadBalancer"]}"
      ]
      ])) == toset([
      "errors=AWS/ApplicationELB/HTTPCode_Target_5XX_Count/Sum/60/app/claude-proxy-alb/50dc6c495c0c9188",
      "requests=AWS/ApplicationELB/RequestCount/Sum/60/app/claude-proxy-alb/50dc6c495c0c9188",
    ])
    error_message = "errors = HTTPCode_Target_5XX_Count and requests = RequestCount, 60 s sums on the ALB."
  }

  assert {
    condition = (
      module.alarms.alarms.proxy_errors.comparison_operator == "GreaterThanThreshold" &&
      module.alarms.alarms.proxy_errors.threshold == 1 &&
      module.alarms.alarms.proxy_errors.evaluation_periods == 3 &&
      module.alarms.alarms.proxy_errors.datapoints_to_alarm == 3 &&
      module.alarms.alarms.proxy_errors.treat_missing_data == "notBreaching" &&
      [for q in module.alarms.alarms.proxy_errors.metric_query : q.expression if q.return_data] == ["100 * FILL(errors, 0) / requests"]
    )
    error_message = "Proxy errors: above 1 % of the requests in 3 of 3 minutes; missing data is not breaching."
  }

  assert {
    condition = toset(flatten([
      for q in module.alarms.alarms.proxy_errors.metric_query : [
        for m in q.metric : "${q.id}=${m.namespace}/${m.metric_name}/${m.stat}/${m.period}/${jsonencode(m.dimensions)}"
      ]
      ])) == toset([
      "errors=ClaudeProxy/ProxyErrors/Sum/60/{\"ServiceName\":\"claude-proxy-service\"}",
      "requests=ClaudeProxy/RequestCount/Sum/60/{\"ServiceName\":\"claude-proxy-service\"}",
    ])
    error_message = "The proxy-errors alarm counts the proxy's EMF ProxyErrors and RequestCount (namespace ClaudeProxy, ServiceName only), never the ALB's target 5xx."
  }

  assert {
    condition = (
      module.alarms.alarms.memory_high.namespace == "AWS/ECS" &&
      module.alarms.alarms.memory_high.metric_name == "MemoryUtilization" &&
      module.alarms.alarms.memory_high.statistic == "Maximum" &&
      module.alarms.alarms.memory_high.threshold == 85 &&
      module.alarms.alarms.memory_high.evaluation_periods == 5 &&
      module.alarms.alarms.memory_high.comparison_operator == "GreaterThanThreshold" &&
      module.alarms.alarms.memory_high.dimensions == tomap({ ClusterName = "claude-proxy-cluster", ServiceName = "claude-proxy-service" })
    )
    error_message = "Memory high: the fullest task's memory above 85 % for 5 minutes."
  }

  assert {
    condition = (
      module.alarms.alarms.elb_5xx.namespace == "AWS/ApplicationELB" &&
      module.alarms.alarms.elb_5xx.metric_name == "HTTPCode_ELB_5XX_Count" &&
      module.alarms.alarms.elb_5xx.statistic == "Sum" &&
      module.alarms.alarms.elb_5xx.period == 300 &&
      module.alarms.alarms.elb_5xx.evaluation_periods == 1 &&
      module.alarms.alarms.elb_5xx.threshold == 10 &&
      module.alarms.alarms.elb_5xx.comparison_operator == "GreaterThanThreshold" &&
      module.alarms.alarms.elb_5xx.dimensions == tomap({ LoadBalancer = "app/claude-proxy-alb/50dc6c495c0c9188" })
    )
    error_message = "ELB 5xx: more than 10 in 5 minutes."
  }

  assert {
    condition = (
      module.alarms.alarms.cpu_high.namespace == "AWS/ECS" &&
      module.alarms.alarms.cpu_high.metric_name == "CPUUtilization" &&
      module.alarms.alarms.cpu_high.threshold == 85 &&
      module.alarms.alarms.cpu_high.comparison_operator == "GreaterThanThreshold" &&
      module.alarms.alarms.cpu_high.dimensions == tomap({ ClusterName = "claude-proxy-cluster", ServiceName = "claude-proxy-service" })
    )
    error_message = "CPU high: service CPU above 85 %."
  }

  assert {
    condition = (
      module.alarms.alarms.unhealthy_hosts.namespace == "AWS/ApplicationELB" &&
      module.alarms.alarms.unhealthy_hosts.metric_name == "UnHealthyHostCount" &&
      module.alarms.alarms.unhealthy_hosts.threshold == 0 &&
      module.alarms.alarms.unhealthy_hosts.comparison_operator == "GreaterThanThreshold" &&
      module.alarms.alarms.unhealthy_hosts.dimensions == tomap({
        LoadBalancer = "app/claude-proxy-alb/50dc6c495c0c9188"
        TargetGroup  = "targetgroup/claude-proxy-tg/73e2d6bc24d8a067"
      })
    )
    error_message = "Unhealthy hosts: above 0, with both the LoadBalancer and the TargetGroup dimension."
  }

  assert {
    condition = (
      output.budget_name == "claude-proxy-monthly" &&
      tonumber(module.alarms.budget.limit_amount) == 500 &&
      module.alarms.budget.limit_unit == "USD" &&
      module.alarms.budget.time_unit == "MONTHLY" &&
      module.alarms.budget.budget_type == "COST"
    )
    error_message = "Budget claude-proxy-monthly: 500 USD a month."
  }

  assert {
    condition = (
      toset([for n in module.alarms.budget.notification : "${n.notification_type}/${n.threshold}"]) == toset(["ACTUAL/80", "ACTUAL/100", "FORECASTED/100"]) &&
      alltrue([for n in module.alarms.budget.notification : n.subscriber_sns_topic_arns == toset(["arn:aws:sns:eu-west-1:123456789012:claude-proxy-alarms"])])
    )
    error_message = "Budget notifications: actual 80 % and 100 %, forecasted 100 %, to the alarm topic."
  }
}

run "internal_paths_are_not_public" {
  command = plan

  assert {
    condition = (
      length(module.alb.internal_paths_rule_ids) == 1
    )
    error_message = "The ALB answers 404 for /metrics and /ready unless expose_internal_paths is set."
  }
}
