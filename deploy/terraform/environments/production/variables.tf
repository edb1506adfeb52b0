################################################################################
# Account and region
################################################################################

variable "aws_region" {
  description = "AWS region to deploy to (the ACM certificate and the secrets must be in it)."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.aws_region))
    error_message = "aws_region is a region code such as eu-west-1."
  }
}

variable "allowed_account_ids" {
  description = "AWS account IDs Terraform may run against (a guard against the wrong credentials). Empty: any."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for a in var.allowed_account_ids : can(regex("^[0-9]{12}$", a))])
    error_message = "allowed_account_ids are 12-digit AWS account IDs."
  }
}

variable "tags" {
  description = "Tags on every resource, through the provider's default_tags (Project, Environment and ManagedBy are always set)."
  type        = map(string)
  default     = {}
  nullable    = false
}

################################################################################
# Network
################################################################################

variable "vpc_cidr" {
  description = "IPv4 CIDR block of the VPC (also CLAUDE_PROXY_FORWARDED_ALLOW_IPS)."
  type        = string
  default     = "10.0.0.0/16"
  nullable    = false

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0))
    error_message = "vpc_cidr must be an IPv4 CIDR block such as 10.0.0.0/16."
  }
}

variable "az_count" {
  description = "Availability zones to spread subnets and tasks over (at least 2)."
  type        = number
  default     = 2
  nullable    = false

  validation {
    condition     = var.az_count >= 2 && floor(var.az_count) == var.az_count
    error_message = "az_count is a whole number, at least 2 (the ALB needs two AZs)."
  }
}

variable "availability_zones" {
  description = "Availability zones to use, in order (the first az_count). Empty: the region's first az_count zones, alphabetically."
  type        = list(string)
  default     = []
  nullable    = false
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all AZs instead of one per AZ: cheaper, but egress then depends on one AZ."
  type        = bool
  default     = false
  nullable    = false
}

variable "enable_interface_endpoints" {
  description = "Interface VPC endpoints for ecr.api, ecr.dkr, logs and secretsmanager (~$7.50/month per endpoint per AZ)."
  type        = bool
  default     = false
  nullable    = false
}

variable "enable_flow_logs" {
  description = "VPC flow logs to the CloudWatch log group /vpc/claude-proxy-flow-logs."
  type        = bool
  default     = false
  nullable    = false
}

variable "alb_ingress_cidr_blocks" {
  description = "IPv4 CIDR blocks that may reach the load balancer on 80/443."
  type        = list(string)
  default     = ["0.0.0.0/0"]
  nullable    = false
}

variable "database_cidr_blocks" {
  description = "IPv4 CIDR blocks the tasks may reach on 5432/6543. Supabase is outside the VPC, hence 0.0.0.0/0."
  type        = list(string)
  default     = ["0.0.0.0/0"]
  nullable    = false
}

################################################################################
# Load balancer
################################################################################

variable "certificate_arn" {
  description = "ACM certificate ARN for the HTTPS listener, in aws_region."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[0-9a-f-]+$", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN: arn:aws:acm:<region>:<account>:certificate/<id>."
  }
}

variable "additional_certificate_arns" {
  description = "More ACM certificates for the HTTPS listener (SNI)."
  type        = list(string)
  default     = []
  nullable    = false
}

variable "idle_timeout" {
  description = "ALB idle timeout (s). Must stay below the app's keep-alive, CLAUDE_PROXY_KEEPALIVE_SECONDS = 310."
  type        = number
  default     = 300
  nullable    = false

  validation {
    condition     = var.idle_timeout >= 1 && var.idle_timeout < 310
    error_message = "idle_timeout is 1-309 s: below the app's keep-alive (310 s), or the ALB reuses connections the app closed and answers 502."
  }
}

variable "deregistration_delay" {
  description = "Seconds a task leaving the target group (deployment, scale-in) keeps its in-flight requests before ECS stops it: the longest stream a deploy lets finish. A deploy takes up to this much longer per batch of tasks, and the old tasks run (and bill) meanwhile. Above every idle timeout (idle_timeout, the app's 310 s keep-alive)."
  type        = number
  default     = 900
  nullable    = false

  validation {
    condition     = var.deregistration_delay >= 600 && var.deregistration_delay <= 3600
    error_message = "deregistration_delay is 600-3600 s: long streams must outlive a deployment, and it must stay above the idle timeouts (ALB 300 s, keep-alive 310 s)."
  }
}

variable "alb_deletion_protection" {
  description = "Deletion protection on the load balancer."
  type        = bool
  default     = true
  nullable    = false
}

variable "alb_access_logs_bucket" {
  description = "Existing S3 bucket for ALB access logs (with the ELB log delivery bucket policy). null: off."
  type        = string
  default     = null
}

variable "alb_access_logs_prefix" {
  description = "Key prefix of the ALB access logs."
  type        = string
  default     = "claude-proxy-alb"
  nullable    = false
}

variable "waf_web_acl_arn" {
  description = "Regional AWS WAF web ACL to associate with the load balancer. null: none."
  type        = string
  default     = null
}

################################################################################
# Image and task
################################################################################

variable "container_image" {
  description = "The app's image, <ecr_repository_url>:<tag> (immutable tags). Rolling back means setting it to the previous tag and applying."
  type        = string
  nullable    = false

  validation {
    condition = (
      length(regexall("(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$", var.container_image)) > 0 &&
      !endswith(var.container_image, ":latest")
    )
    error_message = "container_image needs an explicit tag or digest, not :latest."
  }
}

variable "ecr_kms_key_arn" {
  description = "Customer-managed KMS key to encrypt the ECR repository's images with. null: the AWS-managed aws/ecr key. Set it before the first apply: changing it replaces the repository, which fails while it holds images."
  type        = string
  default     = null

  validation {
    condition     = var.ecr_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.ecr_kms_key_arn))
    error_message = "ecr_kms_key_arn must be a KMS key ARN."
  }
}

variable "ecr_keep_last_images" {
  description = "Images the ECR lifecycle policy keeps (the rollback targets)."
  type        = number
  default     = 30
  nullable    = false
}

variable "task_cpu" {
  description = "Task CPU units (1024 = 1 vCPU)."
  type        = number
  default     = 1024
  nullable    = false

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.task_cpu)
    error_message = "task_cpu is a Fargate size: 256, 512, 1024, 2048, 4096, 8192 or 16384."
  }
}

variable "task_memory" {
  description = "Task memory (MiB), valid for task_cpu (1024 CPU: 2048-8192 in 1024 steps)."
  type        = number
  default     = 2048
  nullable    = false

  validation {
    condition     = var.task_memory >= 512 && var.task_memory <= 122880 && var.task_memory % 512 == 0
    error_message = "task_memory is 512-122880 MiB, a multiple of 512 (and must suit task_cpu)."
  }
}

variable "cpu_architecture" {
  description = "X86_64, or ARM64 if the image is built for it."
  type        = string
  default     = "X86_64"
  nullable    = false

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture is X86_64 or ARM64."
  }
}

variable "extra_environment" {
  description = "More environment variables for the app (e.g. { CLAUDE_PROXY_LOG_LEVEL = \"DEBUG\" }); not the ones the deployment sets, nor the sign-in settings and secrets, which have variables of their own (CLAUDE_PROXY_PUBLIC_URL may stay here instead of public_url)."
  type        = map(string)
  default     = {}
  nullable    = false
}

variable "enable_container_health_check" {
  description = "Add a container-level health check (the ALB's is the source of truth either way)."
  type        = bool
  default     = false
  nullable    = false
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps /ecs/claude-proxy-service."
  type        = number
  default     = 30
  nullable    = false

  validation {
    condition     = contains([0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of CloudWatch's values: 0 (never expire), 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}

################################################################################
# Encryption at rest: customer-managed KMS keys
################################################################################

variable "create_kms_key" {
  description = "Create the customer-managed KMS key alias/claude-proxy (automatic rotation; about 1 USD a month) and encrypt the log groups, the alarm topic and the spill file system with it, wherever no key of your own is given below."
  type        = bool
  default     = true
  nullable    = false
}

variable "log_kms_key_arn" {
  description = "Your own KMS key for the log groups (/ecs/claude-proxy-service, the flow logs); its policy must let logs.<region>.amazonaws.com use it. null: the key of create_kms_key, else CloudWatch's own encryption."
  type        = string
  default     = null

  validation {
    condition     = var.log_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.log_kms_key_arn))
    error_message = "log_kms_key_arn must be a KMS key ARN."
  }
}

variable "sns_kms_key_arn" {
  description = "Your own KMS key for the claude-proxy-alarms topic; its policy must let cloudwatch.amazonaws.com and budgets.amazonaws.com kms:Decrypt and kms:GenerateDataKey* (not aws/sns). null: the key of create_kms_key, else unencrypted."
  type        = string
  default     = null

  validation {
    condition     = var.sns_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key|alias)/.+$", var.sns_kms_key_arn))
    error_message = "sns_kms_key_arn must be a KMS key or alias ARN."
  }
}

variable "efs_kms_key_arn" {
  description = "Your own KMS key for the spill file system (enable_spill_efs). null: the key of create_kms_key, else the AWS-managed aws/elasticfilesystem key. Changing it replaces the file system."
  type        = string
  default     = null

  validation {
    condition     = var.efs_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.efs_kms_key_arn))
    error_message = "efs_kms_key_arn must be a KMS key ARN."
  }
}

################################################################################
# Secrets (Secrets Manager, full ARNs with the 6-character suffix)
################################################################################

variable "anthropic_api_key_secret_arn" {
  description = "Secret holding the Anthropic API key (ANTHROPIC_API_KEY)."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+-[A-Za-z0-9]{6}$", var.anthropic_api_key_secret_arn))
    error_message = "anthropic_api_key_secret_arn must be a full Secrets Manager ARN, with the 6-character suffix (aws secretsmanager describe-secret --secret-id <name> --query ARN)."
  }
}

variable "database_url_secret_arn" {
  description = "Secret holding the PostgreSQL URL (DATABASE_URL), e.g. Supabase's pooler URL."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+-[A-Za-z0-9]{6}$", var.database_url_secret_arn))
    error_message = "database_url_secret_arn must be a full Secrets Manager ARN, with the 6-character suffix."
  }
}

variable "admin_key_secret_arn" {
  description = "Secret holding the admin API bearer token (CLAUDE_PROXY_ADMIN_KEY)."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+-[A-Za-z0-9]{6}$", var.admin_key_secret_arn))
    error_message = "admin_key_secret_arn must be a full Secrets Manager ARN, with the 6-character suffix."
  }
}

variable "secrets_kms_key_arn" {
  description = "Customer-managed KMS key the secrets are encrypted with, all of them (the execution role gets kms:Decrypt on it, through Secrets Manager only). null: the AWS-managed key."
  type        = string
  default     = null

  validation {
    condition     = var.secrets_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.secrets_kms_key_arn))
    error_message = "secrets_kms_key_arn must be a KMS key ARN."
  }
}

################################################################################
# Sign-in (OpenID Connect) and budget alerts: docs/people.md. All optional; without
# oidc_issuer sign-in stays off, and nothing is added to the task definition.
################################################################################

variable "oidc_issuer" {
  description = "The identity provider's issuer URL (CLAUDE_PROXY_OIDC_ISSUER), exactly as its /.well-known/openid-configuration names it. Setting it turns sign-in on, and then oidc_client_id, oidc_client_secret_secret_arn, session_secret_secret_arn and public_url are required. null: sign-in off."
  type        = string
  default     = null

  validation {
    condition     = var.oidc_issuer == null || can(regex("^https://[^\\s]+$", var.oidc_issuer))
    error_message = "oidc_issuer is the IdP's https:// issuer URL, e.g. https://example.okta.com/oauth2/default."
  }
}

variable "oidc_client_id" {
  description = "Client (application) id of the proxy at the identity provider (CLAUDE_PROXY_OIDC_CLIENT_ID)."
  type        = string
  default     = null

  validation {
    condition     = var.oidc_client_id == null || try(length(trimspace(var.oidc_client_id)) > 0, false)
    error_message = "oidc_client_id must not be empty (null: unset)."
  }
}

variable "oidc_scopes" {
  description = "Scopes the proxy asks for, space-separated (CLAUDE_PROXY_OIDC_SCOPES). null: the app's default, openid profile email offline_access."
  type        = string
  default     = null

  validation {
    condition     = var.oidc_scopes == null || try(contains(split(" ", var.oidc_scopes), "openid"), false)
    error_message = "oidc_scopes is a space-separated list that includes openid."
  }
}

variable "oidc_groups_claim" {
  description = "Where the ID token lists the user's groups: a claim name or a JSON pointer (CLAUDE_PROXY_OIDC_GROUPS_CLAIM). null: the app's default, groups."
  type        = string
  default     = null

  validation {
    condition     = var.oidc_groups_claim == null || try(length(trimspace(var.oidc_groups_claim)) > 0, false)
    error_message = "oidc_groups_claim must not be empty (null: the app's default)."
  }
}

variable "oidc_admin_groups" {
  description = "IdP groups whose members may administer the proxy (CLAUDE_PROXY_OIDC_ADMIN_GROUPS, joined with commas). Names are exact and case-sensitive. Empty: none."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for g in var.oidc_admin_groups : length(g) > 0 && g == trimspace(g) && !strcontains(g, ",")])
    error_message = "oidc_admin_groups are group names: not empty, no comma, no leading or trailing space."
  }
}

variable "oidc_allowed_groups" {
  description = "IdP groups whose members alone may sign in (CLAUDE_PROXY_OIDC_ALLOWED_GROUPS, joined with commas). Empty: everyone the IdP signs in."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for g in var.oidc_allowed_groups : length(g) > 0 && g == trimspace(g) && !strcontains(g, ",")])
    error_message = "oidc_allowed_groups are group names: not empty, no comma, no leading or trailing space."
  }
}

variable "public_url" {
  description = "The origin clients use, https://<the certificate's host name> (CLAUDE_PROXY_PUBLIC_URL): the IdP's redirect URI is <public_url>/oauth/callback, and Claude Code's forceLoginGatewayUrl. Required with oidc_issuer. null: unset, or the CLAUDE_PROXY_PUBLIC_URL of extra_environment, where an older configuration may have put it (set one of the two, not both)."
  type        = string
  default     = null

  validation {
    condition     = var.public_url == null || can(regex("^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?$", var.public_url))
    error_message = "public_url is an https:// origin without path or trailing slash, e.g. https://claude-proxy.example.com."
  }
}

variable "oidc_client_secret_secret_arn" {
  description = "Secret holding the OpenID Connect client secret (CLAUDE_PROXY_OIDC_CLIENT_SECRET). Required with oidc_issuer. null: none."
  type        = string
  default     = null

  validation {
    condition     = var.oidc_client_secret_secret_arn == null || can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+-[A-Za-z0-9]{6}$", var.oidc_client_secret_secret_arn))
    error_message = "oidc_client_secret_secret_arn must be a full Secrets Manager ARN, with the 6-character suffix."
  }
}

variable "session_secret_secret_arn" {
  description = "Secret holding the session secret, at least 32 random characters (CLAUDE_PROXY_SESSION_SECRET): it signs the proxy's tokens and admin sessions, the same value for every task. Required with oidc_issuer. null: none."
  type        = string
  default     = null

  validation {
    condition     = var.session_secret_secret_arn == null || can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+-[A-Za-z0-9]{6}$", var.session_secret_secret_arn))
    error_message = "session_secret_secret_arn must be a full Secrets Manager ARN, with the 6-character suffix."
  }
}

variable "alert_webhook_url_secret_arn" {
  description = "Secret holding the Slack incoming webhook URL for budget alerts at 50, 80 and 100 % (CLAUDE_PROXY_ALERT_WEBHOOK_URL; the URL carries the webhook's token). Independent of sign-in. null: no alerts."
  type        = string
  default     = null

  validation {
    condition     = var.alert_webhook_url_secret_arn == null || can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+-[A-Za-z0-9]{6}$", var.alert_webhook_url_secret_arn))
    error_message = "alert_webhook_url_secret_arn must be a full Secrets Manager ARN, with the 6-character suffix."
  }
}

################################################################################
# Tracing (ADOT collector sidecar)
################################################################################

variable "enable_adot" {
  description = "Run the aws-otel-collector sidecar and turn tracing on (CLAUDE_PROXY_TRACING, X-Ray)."
  type        = bool
  default     = false
  nullable    = false
}

variable "adot_image" {
  description = "Image of the ADOT collector (pinned tag)."
  type        = string
  default     = "public.ecr.aws/aws-observability/aws-otel-collector:v0.43.3"
  nullable    = false
}

################################################################################
# Service and capacity
################################################################################

variable "desired_count" {
  description = "Tasks when the service is created; autoscaling owns the count afterwards."
  type        = number
  default     = 2
  nullable    = false
}

variable "health_check_grace_period_seconds" {
  description = "Seconds ECS ignores a new task's failing ALB health checks."
  type        = number
  default     = 60
  nullable    = false
}

variable "fargate_weight" {
  description = "Weight of on-demand FARGATE for tasks beyond the first 2 (which are always on-demand)."
  type        = number
  default     = 1
  nullable    = false
}

variable "fargate_spot_weight" {
  description = "Weight of FARGATE_SPOT for tasks beyond the first 2. 0: no Spot."
  type        = number
  default     = 0
  nullable    = false
}

variable "enable_spill_efs" {
  description = "Keep the spill directory (CLAUDE_PROXY_SPILL_DIR) on an encrypted EFS file system shared by the tasks, mounted through an access point with TLS and the task role, instead of each task's ephemeral storage: request-log rows spilled during a database outage then outlive the task that wrote them."
  type        = bool
  default     = false
  nullable    = false
}

variable "enable_execute_command" {
  description = "Allow ECS Exec (also makes the root filesystem writable, which ECS Exec needs)."
  type        = bool
  default     = false
  nullable    = false
}

variable "wait_for_steady_state" {
  description = "terraform apply waits for the deployment to finish and fails if it rolled back."
  type        = bool
  default     = true
  nullable    = false
}

variable "min_capacity" {
  description = "Fewest tasks autoscaling keeps."
  type        = number
  default     = 2
  nullable    = false
}

variable "max_capacity" {
  description = "Most tasks autoscaling starts (size the database connections for it)."
  type        = number
  default     = 10
  nullable    = false
}

variable "cpu_target_value" {
  description = "Average CPU (%) the CPU target tracking policy keeps."
  type        = number
  default     = 70
  nullable    = false
}

variable "enable_active_streams_scaling" {
  description = "Also scale on the app's ActiveStreams metric (average per task)."
  type        = bool
  default     = false
  nullable    = false
}

variable "active_streams_target" {
  description = "Average open streams per task the ActiveStreams policy keeps."
  type        = number
  default     = 100
  nullable    = false
}

################################################################################
# Alarms and budget
################################################################################

variable "alarm_email" {
  description = "Email subscribed to the claude-proxy-alarms topic. null: none."
  type        = string
  default     = null
}

variable "proxy_error_rate_threshold" {
  description = "Percentage of requests answered with a 5xx the proxy made itself (EMF ProxyErrors) above which claude-proxy-proxy-errors fires and rolls back a deployment in progress."
  type        = number
  default     = 1
  nullable    = false
}

variable "memory_high_threshold" {
  description = "Memory (% of task_memory) of the fullest task above which, for 5 minutes, claude-proxy-memory-high fires."
  type        = number
  default     = 85
  nullable    = false
}

variable "elb_5xx_threshold" {
  description = "ALB-generated 5xx in 5 minutes above which claude-proxy-elb-5xx fires."
  type        = number
  default     = 10
  nullable    = false
}

variable "monthly_budget_usd" {
  description = "Monthly AWS cost budget (USD) of claude-proxy-monthly."
  type        = number
  default     = 500
  nullable    = false
}

variable "budget_cost_filter_tags" {
  description = "Restrict the budget to costs with these (activated cost allocation) tags, e.g. { Project = \"claude-proxy\" }. Empty: the whole account."
  type        = map(string)
  default     = {}
  nullable    = false
}

variable "expose_internal_paths" {
  description = "Let /metrics and /ready through the ALB. Off (default): the ALB answers 404 for them."
  type        = bool
  default     = false
  nullable    = false
}
