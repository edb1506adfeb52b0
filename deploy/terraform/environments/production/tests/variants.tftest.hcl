# The production root with its options switched on, planned against the mocked provider.

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

################################################################################
# NAT gateways: one per AZ, or one
################################################################################

run "single_nat_gateway" {
  command = plan

  variables {
    single_nat_gateway = true
  }

  assert {
    condition     = length(module.network.nat_gateway_ids) == 1 && length(module.network.nat_public_ips) == 1
    error_message = "single_nat_gateway = true creates exactly one NAT gateway (and one Elastic IP)."
  }

  assert {
    condition     = length(module.network.private_subnet_ids) == 2 && length(module.network.private_route_table_ids) == 2
    error_message = "The private subnets and their route tables stay one per AZ."
  }
}

run "nat_gateway_per_az" {
  command = plan

  variables {
    az_count = 3
  }

  assert {
    condition     = length(module.network.nat_gateway_ids) == 3
    error_message = "Without single_nat_gateway there is one NAT gateway per AZ (az_count = 3: three)."
  }

  assert {
    condition = (
      length(module.network.public_subnet_ids) == 3 &&
      length(module.network.private_subnet_ids) == 3 &&
      module.network.availability_zones == tolist(["eu-west-1a", "eu-west-1b", "eu-west-1c"])
    )
    error_message = "az_count = 3: a public and a private subnet in each of three AZs."
  }
}

run "pinned_availability_zones" {
  command = plan

  variables {
    availability_zones = ["eu-west-1c", "eu-west-1a"]
  }

  assert {
    condition     = module.network.availability_zones == tolist(["eu-west-1c", "eu-west-1a"])
    error_message = "availability_zones pins the zones, in the given order."
  }
}

run "flow_logs" {
  command = plan

  variables {
    enable_flow_logs = true
  }

  assert {
    condition = (
      module.network.flow_log_group_name == "/vpc/claude-proxy-flow-logs" &&
      module.network.flow_log.traffic_type == "ALL" &&
      module.network.flow_log.log_destination_type == "cloud-watch-logs"
    )
    error_message = "enable_flow_logs sends all the VPC's traffic records to /vpc/claude-proxy-flow-logs."
  }
}

################################################################################
# Interface endpoints
################################################################################

run "interface_endpoints" {
  command = plan

  variables {
    enable_interface_endpoints = true
  }

  assert {
    condition     = toset(keys(module.network.interface_endpoint_ids)) == toset(["ecr.api", "ecr.dkr", "logs", "secretsmanager"])
    error_message = "enable_interface_endpoints creates the ecr.api, ecr.dkr, logs and secretsmanager endpoints."
  }

  assert {
    condition = (
      length(module.network.endpoints_ingress_rules) == 1 &&
      module.network.endpoints_ingress_rules[0].ip_protocol == "tcp" &&
      module.network.endpoints_ingress_rules[0].from_port == 443 &&
      module.network.endpoints_ingress_rules[0].to_port == 443 &&
      module.network.endpoints_ingress_rules[0].cidr_ipv4 == "10.0.0.0/16"
    )
    error_message = "The endpoints' security group allows 443 from the VPC only."
  }
}

################################################################################
# Tracing: the ADOT collector sidecar
################################################################################

run "adot" {
  command = plan

  variables {
    enable_adot = true
  }

  assert {
    condition = (
      length(jsondecode(module.ecs.container_definitions)) == 2 &&
      jsondecode(module.ecs.container_definitions)[1].name == "aws-otel-collector" &&
      jsondecode(module.ecs.container_definitions)[1].image == "public.ecr.aws/aws-observability/aws-otel-collector:v0.43.3" &&
      jsondecode(module.ecs.container_definitions)[1].essential == false
    )
    error_message = "enable_adot adds the non-essential aws-otel-collector container."
  }

  assert {
    condition = (
      { for e in jsondecode(module.ecs.container_definitions)[0].environment : e.name => e.value }["CLAUDE_PROXY_TRACING"] == "true" &&
      { for e in jsondecode(module.ecs.container_definitions)[0].environment : e.name => e.value }["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4318"
    )
    error_message = "enable_adot turns the app's tracing on, towards the sidecar on localhost:4318."
  }

  assert {
    condition     = jsondecode(module.ecs.container_definitions)[0].dependsOn == [{ containerName = "aws-otel-collector", condition = "START" }]
    error_message = "The app starts after (and stops before) the collector."
  }

  assert {
    condition = (
      [for s in jsondecode(module.iam.task_role_policy).Statement : s.Sid] == ["XRayWrite"] &&
      contains([for s in jsondecode(module.iam.task_role_policy).Statement : s.Action][0], "xray:PutTraceSegments")
    )
    error_message = "With enable_adot, and only then, the task role may write to X-Ray."
  }
}

################################################################################
# Capacity: Fargate Spot
################################################################################

run "fargate_spot" {
  command = plan

  variables {
    fargate_spot_weight = 3
  }

  assert {
    condition = (
      length(module.ecs.service.capacity_provider_strategy) == 2 &&
      anytrue([for s in module.ecs.service.capacity_provider_strategy : s.capacity_provider == "FARGATE" && s.base == 2 && s.weight == 1]) &&
      anytrue([for s in module.ecs.service.capacity_provider_strategy : s.capacity_provider == "FARGATE_SPOT" && s.base == 0 && s.weight == 3])
    )
    error_message = "fargate_spot_weight > 0 adds FARGATE_SPOT next to FARGATE (base 2)."
  }
}

################################################################################
# Autoscaling on ActiveStreams
################################################################################

run "active_streams_scaling" {
  command = plan

  variables {
    enable_active_streams_scaling = true
  }

  assert {
    condition = (
      module.autoscaling.active_streams_policy.name == "claude-proxy-active-streams-target" &&
      module.autoscaling.active_streams_policy.policy_type == "TargetTrackingScaling" &&
      module.autoscaling.active_streams_policy.target_tracking_scaling_policy_configuration[0].target_value == 100
    )
    error_message = "claude-proxy-active-streams-target keeps 100 streams per task."
  }

  assert {
    condition = (
      module.autoscaling.active_streams_policy.target_tracking_scaling_policy_configuration[0].customized_metric_specification[0].namespace == "ClaudeProxy" &&
      module.autoscaling.active_streams_policy.target_tracking_scaling_policy_configuration[0].customized_metric_specification[0].metric_name == "ActiveStreams" &&
      module.autoscaling.active_streams_policy.target_tracking_scaling_policy_configuration[0].customized_metric_specification[0].statistic == "Average" &&
      [for d in module.autoscaling.active_streams_policy.target_tracking_scaling_policy_configuration[0].customized_metric_specification[0].dimensions : "${d.name}=${d.value}"] == ["ServiceName=claude-proxy-service"]
    )
    error_message = "The metric is ClaudeProxy/ActiveStreams, ServiceName=claude-proxy-service, Average."
  }

  assert {
    condition     = output.autoscaling_policy_names == ["claude-proxy-cpu-target", "claude-proxy-active-streams-target"]
    error_message = "CPU tracking stays next to ActiveStreams tracking."
  }
}

################################################################################
# Secrets under a customer-managed KMS key
################################################################################

run "secrets_kms_key" {
  command = plan

  variables {
    secrets_kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
  }

  assert {
    condition = (
      [for s in jsondecode(module.iam.execution_role_policy).Statement : s.Resource if s.Sid == "SecretsKmsDecrypt"][0] == ["arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"] &&
      [for s in jsondecode(module.iam.execution_role_policy).Statement : s.Action if s.Sid == "SecretsKmsDecrypt"][0] == ["kms:Decrypt"]
    )
    error_message = "secrets_kms_key_arn adds kms:Decrypt on that key only."
  }
}

################################################################################
# Operations: ECS Exec, access logs, alarm email
################################################################################

run "execute_command" {
  command = plan

  variables {
    enable_execute_command = true
  }

  assert {
    condition     = module.ecs.service.enable_execute_command == true
    error_message = "enable_execute_command turns ECS Exec on."
  }

  assert {
    condition     = jsondecode(module.ecs.container_definitions)[0].readonlyRootFilesystem == false
    error_message = "ECS Exec needs a writable root filesystem."
  }

  assert {
    condition     = [for s in jsondecode(module.iam.task_role_policy).Statement : s.Sid] == ["EcsExec"]
    error_message = "The task role gets the SSM messages permissions only."
  }
}

run "access_logs_and_email" {
  command = plan

  variables {
    alb_access_logs_bucket = "example-alb-logs"
    alarm_email            = "oncall@example.com"
  }

  assert {
    condition     = module.alb.waf_web_acl_arn == null
    error_message = "No WAF web ACL unless waf_web_acl_arn is set."
  }

  assert {
    condition = (
      module.alb.load_balancer.access_logs[0].bucket == "example-alb-logs" &&
      module.alb.load_balancer.access_logs[0].enabled == true
    )
    error_message = "alb_access_logs_bucket turns on the access logs."
  }

  assert {
    condition = (
      module.alarms.email_subscription.protocol == "email" &&
      module.alarms.email_subscription.endpoint == "oncall@example.com" &&
      module.alarms.email_subscription.topic_arn == "arn:aws:sns:eu-west-1:123456789012:claude-proxy-alarms"
    )
    error_message = "alarm_email subscribes that address to claude-proxy-alarms."
  }
}

run "waf" {
  command = plan

  variables {
    waf_web_acl_arn = "arn:aws:wafv2:eu-west-1:123456789012:regional/webacl/claude-proxy/a1b2c3d4-5678-90ab-cdef-EXAMPLE11111"
  }

  assert {
    condition     = module.alb.waf_web_acl_arn == var.waf_web_acl_arn
    error_message = "waf_web_acl_arn associates that web ACL with the load balancer."
  }
}
