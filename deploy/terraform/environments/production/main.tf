locals {
  name = "claude-proxy"

  # The names the runbook cites: changing one renames (replaces) the resource.
  cluster_name      = "claude-proxy-cluster"
  service_name      = "claude-proxy-service"
  task_family       = "claude-proxy"
  container_name    = "claude-proxy"
  container_port    = 8000
  alb_name          = "claude-proxy-alb"
  target_group_name = "claude-proxy-tg"

  # Encryption at rest: the operator's key where given, else the key this root creates.
  kms_key_arn     = var.create_kms_key ? module.kms[0].key_arn : null
  log_kms_key_arn = var.log_kms_key_arn != null ? var.log_kms_key_arn : local.kms_key_arn
  sns_kms_key_arn = var.sns_kms_key_arn != null ? var.sns_kms_key_arn : local.kms_key_arn
  efs_kms_key_arn = var.efs_kms_key_arn != null ? var.efs_kms_key_arn : local.kms_key_arn

  # Read from Secrets Manager by ECS at task start; the execution role may read these only.
  # The optional ones (sign-in, budget alerts) only when their ARN is set.
  required_secrets = {
    ANTHROPIC_API_KEY      = var.anthropic_api_key_secret_arn
    DATABASE_URL           = var.database_url_secret_arn
    CLAUDE_PROXY_ADMIN_KEY = var.admin_key_secret_arn
  }
  optional_secrets = {
    CLAUDE_PROXY_OIDC_CLIENT_SECRET = var.oidc_client_secret_secret_arn
    CLAUDE_PROXY_SESSION_SECRET     = var.session_secret_secret_arn
    CLAUDE_PROXY_ALERT_WEBHOOK_URL  = var.alert_webhook_url_secret_arn
  }
  secrets = merge(local.required_secrets, { for name, arn in local.optional_secrets : name => arn if arn != null })

  # Sign-in (docs/people.md): plain settings, in the container only when set. The public
  # URL is public_url, or else the CLAUDE_PROXY_PUBLIC_URL an existing configuration may
  # carry in extra_environment (which then reaches the container as before).
  public_url = var.public_url != null ? var.public_url : lookup(var.extra_environment, "CLAUDE_PROXY_PUBLIC_URL", null)
  app_environment = { for name, value in {
    CLAUDE_PROXY_PUBLIC_URL          = var.public_url
    CLAUDE_PROXY_OIDC_ISSUER         = var.oidc_issuer
    CLAUDE_PROXY_OIDC_CLIENT_ID      = var.oidc_client_id
    CLAUDE_PROXY_OIDC_SCOPES         = var.oidc_scopes
    CLAUDE_PROXY_OIDC_GROUPS_CLAIM   = var.oidc_groups_claim
    CLAUDE_PROXY_OIDC_ADMIN_GROUPS   = length(var.oidc_admin_groups) > 0 ? join(",", var.oidc_admin_groups) : null
    CLAUDE_PROXY_OIDC_ALLOWED_GROUPS = length(var.oidc_allowed_groups) > 0 ? join(",", var.oidc_allowed_groups) : null
  } : name => value if value != null }

  # With oidc_issuer set, the proxy refuses to start without these (settings.py): the
  # oidc_redirect_uri output's precondition stops the plan instead.
  signin_missing = var.oidc_issuer == null ? [] : [
    for name, value in {
      oidc_client_id                = var.oidc_client_id
      oidc_client_secret_secret_arn = var.oidc_client_secret_secret_arn
      session_secret_secret_arn     = var.session_secret_secret_arn
      public_url                    = local.public_url
    } : name if value == null
  ]
}

################################################################################
# KMS: the customer-managed key of the logs, the alarm topic and the spill file system
################################################################################

module "kms" {
  source = "../../modules/kms"
  count  = var.create_kms_key ? 1 : 0

  name = local.name
  # The names the ecs and network modules give their log groups.
  log_group_names = ["/ecs/${local.service_name}", "/vpc/${local.name}-flow-logs"]
}

################################################################################
# Network: VPC, public and private subnets, NAT, endpoints
################################################################################

module "network" {
  source = "../../modules/network"

  name                       = local.name
  vpc_cidr                   = var.vpc_cidr
  az_count                   = var.az_count
  availability_zones         = var.availability_zones
  single_nat_gateway         = var.single_nat_gateway
  enable_interface_endpoints = var.enable_interface_endpoints
  enable_flow_logs           = var.enable_flow_logs
  flow_logs_kms_key_arn      = local.log_kms_key_arn
}

################################################################################
# Security groups: the ALB and the tasks
################################################################################

module "security" {
  source = "../../modules/security"

  name                    = local.name
  vpc_id                  = module.network.vpc_id
  container_port          = local.container_port
  alb_ingress_cidr_blocks = var.alb_ingress_cidr_blocks
  database_cidr_blocks    = var.database_cidr_blocks
}

################################################################################
# Load balancer
################################################################################

module "alb" {
  source = "../../modules/alb"

  name                        = local.alb_name
  target_group_name           = local.target_group_name
  vpc_id                      = module.network.vpc_id
  public_subnet_ids           = module.network.public_subnet_ids
  security_group_id           = module.security.alb_security_group_id
  certificate_arn             = var.certificate_arn
  additional_certificate_arns = var.additional_certificate_arns
  idle_timeout                = var.idle_timeout
  deregistration_delay        = var.deregistration_delay
  container_port              = local.container_port
  enable_deletion_protection  = var.alb_deletion_protection
  access_logs_bucket          = var.alb_access_logs_bucket
  access_logs_prefix          = var.alb_access_logs_prefix
  waf_web_acl_arn             = var.waf_web_acl_arn
  expose_internal_paths       = var.expose_internal_paths
}

################################################################################
# Image repository
################################################################################

module "ecr" {
  source = "../../modules/ecr"

  name             = local.name
  keep_last_images = var.ecr_keep_last_images
  kms_key_arn      = var.ecr_kms_key_arn
}

################################################################################
# Spill file system (optional): the request-log spill directory on EFS
################################################################################

module "spill_efs" {
  source = "../../modules/efs"
  count  = var.enable_spill_efs ? 1 : 0

  name                   = local.name
  vpc_id                 = module.network.vpc_id
  subnet_ids             = module.network.private_subnet_ids
  task_security_group_id = module.security.task_security_group_id
  kms_key_arn            = local.efs_kms_key_arn
}

################################################################################
# IAM: execution role and task role
################################################################################

module "iam" {
  source = "../../modules/iam"

  name                   = local.name
  ecr_repository_arn     = module.ecr.repository_arn
  log_group_arn          = module.ecs.log_group_arn
  secret_arns            = values(local.secrets)
  secrets_kms_key_arn    = var.secrets_kms_key_arn
  enable_adot            = var.enable_adot
  enable_execute_command = var.enable_execute_command
  spill_efs = var.enable_spill_efs ? {
    file_system_arn  = module.spill_efs[0].file_system_arn
    access_point_arn = module.spill_efs[0].access_point_arn
  } : null
}

################################################################################
# ECS: cluster, log group, task definition, service
################################################################################

module "ecs" {
  source = "../../modules/ecs"

  cluster_name   = local.cluster_name
  service_name   = local.service_name
  task_family    = local.task_family
  container_name = local.container_name
  container_port = local.container_port

  container_image    = var.container_image
  task_cpu           = var.task_cpu
  task_memory        = var.task_memory
  cpu_architecture   = var.cpu_architecture
  execution_role_arn = module.iam.execution_role_arn
  task_role_arn      = module.iam.task_role_arn
  secrets            = local.secrets

  # Only the ALB reaches the tasks, from inside the VPC: trust its X-Forwarded-* headers.
  forwarded_allow_ips = var.vpc_cidr
  extra_environment   = var.extra_environment
  app_environment     = local.app_environment

  enable_adot                   = var.enable_adot
  adot_image                    = var.adot_image
  enable_container_health_check = var.enable_container_health_check
  log_retention_days            = var.log_retention_days
  log_kms_key_arn               = local.log_kms_key_arn
  spill_efs = var.enable_spill_efs ? {
    file_system_id  = module.spill_efs[0].file_system_id
    access_point_id = module.spill_efs[0].access_point_id
  } : null

  subnet_ids                        = module.network.private_subnet_ids
  security_group_ids                = [module.security.task_security_group_id]
  target_group_arn                  = module.alb.target_group_arn
  desired_count                     = var.desired_count
  health_check_grace_period_seconds = var.health_check_grace_period_seconds
  fargate_weight                    = var.fargate_weight
  fargate_spot_weight               = var.fargate_spot_weight
  deregistration_delay              = var.deregistration_delay
  deployment_alarm_names            = [module.alarms.deployment_alarm_name]
  enable_execute_command            = var.enable_execute_command
  wait_for_steady_state             = var.wait_for_steady_state
}

################################################################################
# Autoscaling
################################################################################

module "autoscaling" {
  source = "../../modules/autoscaling"

  name                          = local.name
  cluster_name                  = module.ecs.cluster_name
  service_name                  = module.ecs.service_name
  min_capacity                  = var.min_capacity
  max_capacity                  = var.max_capacity
  cpu_target_value              = var.cpu_target_value
  enable_active_streams_scaling = var.enable_active_streams_scaling
  active_streams_target         = var.active_streams_target
}

################################################################################
# Alarms, SNS topic, budget
################################################################################

module "alarms" {
  source = "../../modules/alarms"

  name                       = local.name
  alb_arn_suffix             = module.alb.alb_arn_suffix
  target_group_arn_suffix    = module.alb.target_group_arn_suffix
  cluster_name               = local.cluster_name
  service_name               = local.service_name
  alarm_email                = var.alarm_email
  sns_kms_key_arn            = local.sns_kms_key_arn
  proxy_error_rate_threshold = var.proxy_error_rate_threshold
  memory_high_threshold      = var.memory_high_threshold
  elb_5xx_threshold          = var.elb_5xx_threshold
  monthly_budget_usd         = var.monthly_budget_usd
  budget_cost_filter_tags    = var.budget_cost_filter_tags
}
