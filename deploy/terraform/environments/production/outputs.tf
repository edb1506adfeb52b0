################################################################################
# Entry point
################################################################################

output "alb_dns_name" {
  description = "DNS name of the load balancer: point the proxy's host name at it (CNAME, or a Route 53 alias with alb_zone_id)."
  value       = module.alb.alb_dns_name
}

output "alb_zone_id" {
  description = "Route 53 hosted zone ID of the load balancer, for an alias record."
  value       = module.alb.alb_zone_id
}

output "alb_arn_suffix" {
  description = "LoadBalancer dimension of the ALB's CloudWatch metrics."
  value       = module.alb.alb_arn_suffix
}

output "target_group_arn_suffix" {
  description = "TargetGroup dimension of the target group's CloudWatch metrics."
  value       = module.alb.target_group_arn_suffix
}

################################################################################
# ECS
################################################################################

output "cluster_name" {
  description = "ECS cluster name."
  value       = module.ecs.cluster_name
}

output "service_name" {
  description = "ECS service name."
  value       = module.ecs.service_name
}

output "task_definition_family" {
  description = "Task definition family."
  value       = module.ecs.task_definition_family
}

output "task_definition_arn" {
  description = "Task definition ARN (with the revision this apply registered)."
  value       = module.ecs.task_definition_arn
}

output "container_name" {
  description = "Name of the app container."
  value       = module.ecs.container_name
}

output "container_image" {
  description = "The image the service runs (roll back by setting container_image to the previous one)."
  value       = var.container_image
}

output "log_group_name" {
  description = "CloudWatch log group of the containers (Logs Insights queries: docs/observability.md)."
  value       = module.ecs.log_group_name
}

output "ecr_repository_url" {
  description = "ECR repository to push images to: docker push <url>:<tag>."
  value       = module.ecr.repository_url
}

output "ecr_repository_name" {
  description = "ECR repository name."
  value       = module.ecr.repository_name
}

output "execution_role_arn" {
  description = "ARN of the task execution role."
  value       = module.iam.execution_role_arn
}

output "task_role_arn" {
  description = "ARN of the task role."
  value       = module.iam.task_role_arn
}

output "autoscaling_policy_names" {
  description = "Names of the target tracking policies."
  value       = module.autoscaling.policy_names
}

################################################################################
# Alarms
################################################################################

output "sns_topic_arn" {
  description = "ARN of the claude-proxy-alarms topic."
  value       = module.alarms.sns_topic_arn
}

output "alarm_names" {
  description = "CloudWatch alarm names, by purpose."
  value       = module.alarms.alarm_names
}

output "budget_name" {
  description = "Name of the monthly budget."
  value       = module.alarms.budget_name
}

################################################################################
# Network
################################################################################

output "vpc_id" {
  description = "ID of the VPC."
  value       = module.network.vpc_id
}

output "public_subnet_ids" {
  description = "Public subnets (ALB, NAT gateways)."
  value       = module.network.public_subnet_ids
}

output "private_subnet_ids" {
  description = "Private subnets (tasks): use them, with task_security_group_id, for one-off tasks such as migrations."
  value       = module.network.private_subnet_ids
}

output "nat_public_ips" {
  description = "Public IPs the tasks' outbound traffic comes from: allowlist them at the database (Supabase network restrictions) and, if used, at Anthropic."
  value       = module.network.nat_public_ips
}

output "alb_security_group_id" {
  description = "ID of claude-proxy-alb-sg."
  value       = module.security.alb_security_group_id
}

output "task_security_group_id" {
  description = "ID of claude-proxy-task-sg."
  value       = module.security.task_security_group_id
}

################################################################################
# Encryption and the spill file system
################################################################################

output "kms_key_arn" {
  description = "ARN of the customer-managed key this root created (create_kms_key), or null."
  value       = local.kms_key_arn
}

output "spill_file_system_id" {
  description = "ID of the spill directory's EFS file system (enable_spill_efs), or null."
  value       = var.enable_spill_efs ? module.spill_efs[0].file_system_id : null
}

################################################################################
# Sign-in
################################################################################

output "oidc_redirect_uri" {
  description = "The redirect URI to register at the identity provider, <public_url>/oauth/callback; null while sign-in is off (no oidc_issuer)."
  value       = var.oidc_issuer != null && length(local.signin_missing) == 0 ? "${local.public_url}/oauth/callback" : null

  # Checked by every plan: a half-configured sign-in fails here, not at the tasks' start.
  precondition {
    condition     = length(local.signin_missing) == 0
    error_message = "oidc_issuer is set, so sign-in is on: also set ${join(", ", local.signin_missing)}. The proxy refuses to start without them (docs/deploy.md, step 3)."
  }

  precondition {
    condition     = var.public_url == null || lookup(var.extra_environment, "CLAUDE_PROXY_PUBLIC_URL", var.public_url) == var.public_url
    error_message = "public_url and extra_environment's CLAUDE_PROXY_PUBLIC_URL differ: set the public URL once, in public_url."
  }
}
