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

################################################################################
# Encryption at rest: the operator's own keys, or none
################################################################################

run "own_kms_keys" {
  command = plan

  variables {
    create_kms_key  = false
    log_kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/11111111-1111-4111-8111-111111111111"
    sns_kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/22222222-2222-4222-8222-222222222222"
    ecr_kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/33333333-3333-4333-8333-333333333333"
    efs_kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/44444444-4444-4444-8444-444444444444"

    enable_flow_logs = true
    enable_spill_efs = true
  }

  assert {
    condition     = length(module.kms) == 0 && output.kms_key_arn == null
    error_message = "create_kms_key = false creates no key."
  }

  assert {
    condition = (
      module.ecs.log_group.kms_key_id == var.log_kms_key_arn &&
      module.network.flow_log_group.kms_key_id == var.log_kms_key_arn &&
      module.alarms.sns_topic.kms_master_key_id == var.sns_kms_key_arn &&
      module.ecr.repository.encryption_configuration[0].encryption_type == "KMS" &&
      module.ecr.repository.encryption_configuration[0].kms_key == var.ecr_kms_key_arn &&
      module.spill_efs[0].file_system.kms_key_id == var.efs_kms_key_arn
    )
    error_message = "log_kms_key_arn, sns_kms_key_arn, ecr_kms_key_arn and efs_kms_key_arn reach the log groups, the topic, the repository and the file system."
  }
}

run "created_key_for_every_log_group" {
  command = plan

  variables {
    enable_flow_logs = true
    sns_kms_key_arn  = "arn:aws:kms:eu-west-1:123456789012:key/22222222-2222-4222-8222-222222222222"
  }

  assert {
    condition = (
      module.network.flow_log_group.kms_key_id == output.kms_key_arn &&
      module.ecs.log_group.kms_key_id == output.kms_key_arn &&
      module.alarms.sns_topic.kms_master_key_id == var.sns_kms_key_arn
    )
    error_message = "The created key encrypts the flow logs too; a key of one's own replaces it where given."
  }
}

run "no_kms_key" {
  command = plan

  variables {
    create_kms_key = false
  }

  assert {
    condition     = module.ecs.log_group.kms_key_id == null && module.alarms.sns_topic.kms_master_key_id == null
    error_message = "Without create_kms_key nor keys of one's own: CloudWatch's own encryption, an unencrypted topic."
  }
}

################################################################################
# The spill directory on EFS
################################################################################

run "spill_efs" {
  command = plan

  variables {
    enable_spill_efs = true
  }

  assert {
    condition = (
      module.spill_efs[0].file_system.encrypted == true &&
      module.spill_efs[0].file_system.kms_key_id == output.kms_key_arn &&
      output.spill_file_system_id == "fs-0123456789abcdef0"
    )
    error_message = "The spill file system is encrypted at rest with the customer-managed key."
  }

  assert {
    condition = (
      module.spill_efs[0].access_point.file_system_id == "fs-0123456789abcdef0" &&
      module.spill_efs[0].access_point.posix_user[0].uid == 10001 &&
      module.spill_efs[0].access_point.posix_user[0].gid == 10001 &&
      module.spill_efs[0].access_point.root_directory[0].path == "/spill" &&
      module.spill_efs[0].access_point.root_directory[0].creation_info[0].owner_uid == 10001 &&
      module.spill_efs[0].access_point.root_directory[0].creation_info[0].permissions == "0750"
    )
    error_message = "The access point exposes /spill as the image's user, 10001:10001."
  }

  assert {
    condition = (
      [for v in module.ecs.task_definition.volume : v.efs_volume_configuration[0].file_system_id if v.name == "spill"] == ["fs-0123456789abcdef0"] &&
      [for v in module.ecs.task_definition.volume : v.efs_volume_configuration[0].transit_encryption if v.name == "spill"] == ["ENABLED"] &&
      [for v in module.ecs.task_definition.volume : v.efs_volume_configuration[0].authorization_config[0].access_point_id if v.name == "spill"] == ["fsap-0123456789abcdef0"] &&
      [for v in module.ecs.task_definition.volume : v.efs_volume_configuration[0].authorization_config[0].iam if v.name == "spill"] == ["ENABLED"] &&
      alltrue([for v in module.ecs.task_definition.volume : length(v.efs_volume_configuration) == 0 if v.name != "spill"])
    )
    error_message = "The spill volume is the access point, over TLS, with the task role's identity; /tmp stays ephemeral."
  }

  assert {
    condition = (
      toset([for m in jsondecode(module.ecs.container_definitions)[0].mountPoints : "${m.sourceVolume}:${m.containerPath}:${m.readOnly}"])
      == toset(["spill:/var/lib/claude-proxy/spill:false", "tmp:/tmp:false"]) &&
      { for e in jsondecode(module.ecs.container_definitions)[0].environment : e.name => e.value }["CLAUDE_PROXY_SPILL_DIR"] == "/var/lib/claude-proxy/spill"
    )
    error_message = "The file system is mounted, writable, at the spill directory CLAUDE_PROXY_SPILL_DIR names."
  }

  assert {
    condition = (
      length(module.spill_efs[0].ingress_rules) == 1 &&
      module.spill_efs[0].ingress_rules[0].security_group_id == "sg-0e1f2a3b4c5d6e7f8" &&
      module.spill_efs[0].ingress_rules[0].ip_protocol == "tcp" &&
      module.spill_efs[0].ingress_rules[0].from_port == 2049 &&
      module.spill_efs[0].ingress_rules[0].to_port == 2049 &&
      module.spill_efs[0].ingress_rules[0].referenced_security_group_id == "sg-0f9e8d7c6b5a4f9e8" &&
      module.spill_efs[0].ingress_rules[0].cidr_ipv4 == null
    )
    error_message = "The mount targets accept NFS (2049) from the task security group only."
  }

  assert {
    condition = (
      length(module.spill_efs[0].task_egress_rules) == 1 &&
      module.spill_efs[0].task_egress_rules[0].security_group_id == "sg-0f9e8d7c6b5a4f9e8" &&
      module.spill_efs[0].task_egress_rules[0].from_port == 2049 &&
      module.spill_efs[0].task_egress_rules[0].to_port == 2049 &&
      module.spill_efs[0].task_egress_rules[0].referenced_security_group_id == "sg-0e1f2a3b4c5d6e7f8" &&
      module.spill_efs[0].task_egress_rules[0].cidr_ipv4 == null
    )
    error_message = "The tasks may send NFS to the mount targets' security group only."
  }

  assert {
    condition = (
      length(module.spill_efs[0].mount_targets) == 2 &&
      alltrue([for m in module.spill_efs[0].mount_targets : m.security_groups == toset(["sg-0e1f2a3b4c5d6e7f8"])])
    )
    error_message = "One mount target per private subnet, in the EFS security group."
  }

  assert {
    condition = (
      [for s in jsondecode(module.iam.task_role_policy).Statement : s.Sid] == ["SpillEfs"] &&
      toset([for s in jsondecode(module.iam.task_role_policy).Statement : s.Action][0]) == toset(["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]) &&
      [for s in jsondecode(module.iam.task_role_policy).Statement : s.Resource][0] == ["arn:aws:elasticfilesystem:eu-west-1:123456789012:file-system/fs-0123456789abcdef0"] &&
      [for s in jsondecode(module.iam.task_role_policy).Statement : s.Condition.StringEquals["elasticfilesystem:AccessPointArn"]][0] == "arn:aws:elasticfilesystem:eu-west-1:123456789012:access-point/fsap-0123456789abcdef0"
    )
    error_message = "The task role may mount and write the file system through the spill access point only (no root access)."
  }

  assert {
    condition = (
      [for s in jsondecode(module.spill_efs[0].file_system_policy).Statement : s.Sid] == ["DenyWithoutTls", "DenyOutsideTheAccessPoint"] &&
      alltrue([for s in jsondecode(module.spill_efs[0].file_system_policy).Statement : s.Effect == "Deny"]) &&
      [for s in jsondecode(module.spill_efs[0].file_system_policy).Statement : s.Condition.Bool["aws:SecureTransport"] if s.Sid == "DenyWithoutTls"][0] == "false"
    )
    error_message = "The file system policy refuses clients without TLS and mounts outside the access point."
  }
}

################################################################################
# Sign-in (OpenID Connect) and budget alerts
################################################################################

run "sign_in_and_alerts" {
  command = plan

  variables {
    oidc_issuer                   = "https://example.okta.com/oauth2/default"
    oidc_client_id                = "0oa1b2c3d4e5f6g7h8i9"
    oidc_scopes                   = "openid profile email offline_access groups"
    oidc_groups_claim             = "/resource_access/claude-proxy/roles"
    oidc_admin_groups             = ["platform-admins"]
    oidc_allowed_groups           = ["engineering", "platform-admins"]
    public_url                    = "https://claude-proxy.example.com"
    oidc_client_secret_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:claude-proxy/oidc-client-secret-StUvWx"
    session_secret_secret_arn     = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:claude-proxy/session-secret-YzAbCd"
    alert_webhook_url_secret_arn  = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:claude-proxy/alert-webhook-url-EfGhIj"
  }

  assert {
    condition = (
      { for s in jsondecode(module.ecs.container_definitions)[0].secrets : s.name => s.valueFrom } == {
        ANTHROPIC_API_KEY               = var.anthropic_api_key_secret_arn
        DATABASE_URL                    = var.database_url_secret_arn
        CLAUDE_PROXY_ADMIN_KEY          = var.admin_key_secret_arn
        CLAUDE_PROXY_OIDC_CLIENT_SECRET = var.oidc_client_secret_secret_arn
        CLAUDE_PROXY_SESSION_SECRET     = var.session_secret_secret_arn
        CLAUDE_PROXY_ALERT_WEBHOOK_URL  = var.alert_webhook_url_secret_arn
      }
    )
    error_message = "Sign-in and alerts add the client secret, the session secret and the webhook URL to the container's secrets, from their ARNs."
  }

  assert {
    condition = (
      { for e in jsondecode(module.ecs.container_definitions)[0].environment : e.name => e.value if startswith(e.name, "CLAUDE_PROXY_OIDC_") || e.name == "CLAUDE_PROXY_PUBLIC_URL" } == {
        CLAUDE_PROXY_OIDC_ISSUER         = "https://example.okta.com/oauth2/default"
        CLAUDE_PROXY_OIDC_CLIENT_ID      = "0oa1b2c3d4e5f6g7h8i9"
        CLAUDE_PROXY_OIDC_SCOPES         = "openid profile email offline_access groups"
        CLAUDE_PROXY_OIDC_GROUPS_CLAIM   = "/resource_access/claude-proxy/roles"
        CLAUDE_PROXY_OIDC_ADMIN_GROUPS   = "platform-admins"
        CLAUDE_PROXY_OIDC_ALLOWED_GROUPS = "engineering,platform-admins"
        CLAUDE_PROXY_PUBLIC_URL          = "https://claude-proxy.example.com"
      }
    )
    error_message = "The sign-in settings reach the container's plain environment, the group lists joined with commas."
  }

  assert {
    condition = length([
      for e in jsondecode(module.ecs.container_definitions)[0].environment : e.name
      if contains(["CLAUDE_PROXY_OIDC_CLIENT_SECRET", "CLAUDE_PROXY_SESSION_SECRET", "CLAUDE_PROXY_ALERT_WEBHOOK_URL"], e.name)
    ]) == 0
    error_message = "No secret is in the plain environment."
  }

  assert {
    condition = (
      [for s in jsondecode(module.iam.execution_role_policy).Statement : s.Sid] == ["EcrAuthorization", "EcrPull", "Logs", "Secrets"] &&
      toset([for s in jsondecode(module.iam.execution_role_policy).Statement : s if s.Sid == "Secrets"][0].Resource) == toset([
        var.anthropic_api_key_secret_arn, var.database_url_secret_arn, var.admin_key_secret_arn,
        var.oidc_client_secret_secret_arn, var.session_secret_secret_arn, var.alert_webhook_url_secret_arn,
      ]) &&
      length([for s in jsondecode(module.iam.execution_role_policy).Statement : s if s.Sid == "Secrets"][0].Resource) == 6 &&
      toset([for s in jsondecode(module.iam.execution_role_policy).Statement : s if s.Sid == "Secrets"][0].Action) == toset(["secretsmanager:GetSecretValue"])
    )
    error_message = "The execution role may read exactly the six secrets, and nothing else in Secrets Manager."
  }

  assert {
    condition     = output.oidc_redirect_uri == "https://claude-proxy.example.com/oauth/callback"
    error_message = "oidc_redirect_uri is <public_url>/oauth/callback, what the IdP must have registered."
  }
}

run "alerts_without_sign_in" {
  command = plan

  variables {
    alert_webhook_url_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:claude-proxy/alert-webhook-url-EfGhIj"
  }

  assert {
    condition = (
      toset([for s in jsondecode(module.ecs.container_definitions)[0].secrets : s.name]) == toset(["ANTHROPIC_API_KEY", "DATABASE_URL", "CLAUDE_PROXY_ADMIN_KEY", "CLAUDE_PROXY_ALERT_WEBHOOK_URL"]) &&
      length([for e in jsondecode(module.ecs.container_definitions)[0].environment : e if startswith(e.name, "CLAUDE_PROXY_OIDC_") || e.name == "CLAUDE_PROXY_PUBLIC_URL"]) == 0
    )
    error_message = "The alert webhook alone adds its secret, and no sign-in setting."
  }

  assert {
    condition = toset([for s in jsondecode(module.iam.execution_role_policy).Statement : s if s.Sid == "Secrets"][0].Resource) == toset([
      var.anthropic_api_key_secret_arn, var.database_url_secret_arn, var.admin_key_secret_arn, var.alert_webhook_url_secret_arn,
    ])
    error_message = "The execution role may read the webhook's secret too, and no other."
  }

  assert {
    condition     = output.oidc_redirect_uri == null
    error_message = "No redirect URI while sign-in is off."
  }
}

run "sign_in_with_the_public_url_of_extra_environment" {
  command = plan

  variables {
    oidc_issuer                   = "https://example.okta.com/oauth2/default"
    oidc_client_id                = "0oa1b2c3d4e5f6g7h8i9"
    oidc_client_secret_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:claude-proxy/oidc-client-secret-StUvWx"
    session_secret_secret_arn     = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:claude-proxy/session-secret-YzAbCd"
    extra_environment             = { CLAUDE_PROXY_PUBLIC_URL = "https://claude-proxy.example.com" }
  }

  assert {
    condition = (
      output.oidc_redirect_uri == "https://claude-proxy.example.com/oauth/callback" &&
      { for e in jsondecode(module.ecs.container_definitions)[0].environment : e.name => e.value }["CLAUDE_PROXY_PUBLIC_URL"] == "https://claude-proxy.example.com" &&
      !contains([for e in jsondecode(module.ecs.container_definitions)[0].environment : e.name], "CLAUDE_PROXY_OIDC_SCOPES")
    )
    error_message = "A CLAUDE_PROXY_PUBLIC_URL already in extra_environment is the public URL sign-in uses; unset optional settings stay the app's defaults."
  }
}
