################################################################################
# Names
################################################################################

variable "cluster_name" {
  description = "Name of the ECS cluster."
  type        = string
  default     = "claude-proxy-cluster"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,255}$", var.cluster_name))
    error_message = "cluster_name is 1-255 letters, digits, hyphens and underscores."
  }
}

variable "service_name" {
  description = "Name of the ECS service. Also the log group (/ecs/<service_name>) and the app's CLAUDE_PROXY_SERVICE_NAME, the ServiceName dimension of its EMF metrics."
  type        = string
  default     = "claude-proxy-service"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,255}$", var.service_name))
    error_message = "service_name is 1-255 letters, digits, hyphens and underscores."
  }
}

variable "task_family" {
  description = "Family of the task definition."
  type        = string
  default     = "claude-proxy"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,255}$", var.task_family))
    error_message = "task_family is 1-255 letters, digits, hyphens and underscores."
  }
}

variable "container_name" {
  description = "Name of the app container (the load balancer's target, and the log stream prefix)."
  type        = string
  default     = "claude-proxy"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,255}$", var.container_name)) && var.container_name != "aws-otel-collector"
    error_message = "container_name is 1-255 letters, digits, hyphens and underscores, and not aws-otel-collector (the sidecar's)."
  }
}

variable "container_port" {
  description = "Port the app listens on (CLAUDE_PROXY_PORT)."
  type        = number
  default     = 8000
  nullable    = false

  validation {
    condition     = var.container_port >= 1 && var.container_port <= 65535 && floor(var.container_port) == var.container_port
    error_message = "container_port is a TCP port (1-65535)."
  }
}

################################################################################
# Task
################################################################################

variable "container_image" {
  description = "Image of the app, with an immutable tag or a digest: <repository_url>:<tag>. Rolling back means setting it to the previous tag and applying."
  type        = string
  nullable    = false

  validation {
    condition = (
      length(regexall("(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$", var.container_image)) > 0 &&
      !endswith(var.container_image, ":latest")
    )
    error_message = "container_image needs an explicit tag or digest (<repository>:<tag> or <repository>@sha256:<digest>), and not :latest: a deploy and a rollback must name one image."
  }
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
  description = "Task memory (MiB). Must suit task_cpu (1024 CPU: 2048-8192 in steps of 1024; see the Fargate task size table)."
  type        = number
  default     = 2048
  nullable    = false

  validation {
    condition     = var.task_memory >= 512 && var.task_memory <= 122880 && var.task_memory % 512 == 0
    error_message = "task_memory is 512-122880 MiB, a multiple of 512 (and must suit task_cpu)."
  }
}

variable "cpu_architecture" {
  description = "CPU architecture of the task: X86_64, or ARM64 (Graviton, cheaper) if the image is built for it."
  type        = string
  default     = "X86_64"
  nullable    = false

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture is X86_64 or ARM64."
  }
}

variable "execution_role_arn" {
  description = "ARN of the task execution role (image pull, logs, secrets)."
  type        = string
  nullable    = false
}

variable "task_role_arn" {
  description = "ARN of the task role (the app's own AWS permissions)."
  type        = string
  nullable    = false
}

variable "secrets" {
  description = "Environment variables read from Secrets Manager at task start: name => full secret ARN."
  type        = map(string)
  nullable    = false

  validation {
    condition = alltrue([
      for k, v in var.secrets :
      can(regex("^[A-Za-z_][A-Za-z0-9_]*$", k)) &&
      can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+-[A-Za-z0-9]{6}$", v))
    ])
    error_message = "secrets maps environment variable names to full Secrets Manager ARNs (with the 6-character suffix)."
  }
}

variable "forwarded_allow_ips" {
  description = "CLAUDE_PROXY_FORWARDED_ALLOW_IPS: where X-Forwarded-For/-Proto are trusted from (the VPC CIDR: only the ALB reaches the tasks)."
  type        = string
  nullable    = false

  validation {
    condition     = length(trimspace(var.forwarded_allow_ips)) > 0
    error_message = "forwarded_allow_ips must not be empty (the app would ignore the ALB's X-Forwarded-* headers)."
  }
}

variable "extra_environment" {
  description = "More environment variables for the app container (e.g. CLAUDE_PROXY_LOG_LEVEL). The ones this module sets cannot be overridden here."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    condition = alltrue([
      for k in keys(var.extra_environment) :
      can(regex("^[A-Za-z_][A-Za-z0-9_]*$", k)) && !contains([
        "CLAUDE_PROXY_HOST", "CLAUDE_PROXY_PORT", "CLAUDE_PROXY_EMF_ENABLED", "CLAUDE_PROXY_SERVICE_NAME",
        "CLAUDE_PROXY_FORWARDED_ALLOW_IPS", "CLAUDE_PROXY_KEEPALIVE_SECONDS", "CLAUDE_PROXY_PRE_STOP_SECONDS",
        "CLAUDE_PROXY_DRAIN_SECONDS", "CLAUDE_PROXY_LOG_FLUSH_TIMEOUT_SECONDS", "CLAUDE_PROXY_IDLE_TIMEOUT_SECONDS",
        "CLAUDE_PROXY_SPILL_DIR", "CLAUDE_PROXY_METRICS_DIR",
        "CLAUDE_PROXY_TRACING", "OTEL_EXPORTER_OTLP_ENDPOINT",
        "ANTHROPIC_API_KEY", "DATABASE_URL", "CLAUDE_PROXY_ADMIN_KEY",
        "CLAUDE_PROXY_OIDC_CLIENT_SECRET", "CLAUDE_PROXY_SESSION_SECRET", "CLAUDE_PROXY_ALERT_WEBHOOK_URL",
        "CLAUDE_PROXY_OIDC_ISSUER", "CLAUDE_PROXY_OIDC_CLIENT_ID", "CLAUDE_PROXY_OIDC_SCOPES",
        "CLAUDE_PROXY_OIDC_GROUPS_CLAIM", "CLAUDE_PROXY_OIDC_ADMIN_GROUPS", "CLAUDE_PROXY_OIDC_ALLOWED_GROUPS",
      ], k)
    ])
    error_message = "extra_environment keys are environment variable names, other than the ones the module manages (host, port, EMF, service name, forwarded IPs, keep-alive, pre-stop, drain, log flush, idle timeout, spill and metrics dirs, tracing), the secrets (which go in secrets: the OIDC client secret, the session secret and the alert webhook URL among them) and the sign-in settings (app_environment)."
  }
}

variable "app_environment" {
  description = "Settings of the app the caller derives from its own variables (the production root: sign-in, CLAUDE_PROXY_OIDC_* and CLAUDE_PROXY_PUBLIC_URL), only the ones set. They override extra_environment; the ones this module manages override them. Never a secret: those go in secrets."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    condition = alltrue([
      for k in keys(var.app_environment) :
      can(regex("^[A-Za-z_][A-Za-z0-9_]*$", k)) && !contains([
        "ANTHROPIC_API_KEY", "DATABASE_URL", "CLAUDE_PROXY_ADMIN_KEY",
        "CLAUDE_PROXY_OIDC_CLIENT_SECRET", "CLAUDE_PROXY_SESSION_SECRET", "CLAUDE_PROXY_ALERT_WEBHOOK_URL",
      ], k)
    ])
    error_message = "app_environment keys are environment variable names, and never a secret's (the secrets go in secrets)."
  }
}

variable "enable_container_health_check" {
  description = "Add a container health check (python urllib against /health). The ALB's health check decides routing and replacement either way."
  type        = bool
  default     = false
  nullable    = false
}

variable "container_restart_policy_enabled" {
  description = "Restart a crashed app container in place (ECS container restart policy) instead of replacing the task, so the spill volume survives."
  type        = bool
  default     = true
  nullable    = false
}

variable "enable_adot" {
  description = "Run an AWS Distro for OpenTelemetry collector sidecar (aws-otel-collector, X-Ray export) and turn the app's tracing on."
  type        = bool
  default     = false
  nullable    = false
}

variable "adot_image" {
  description = "Image of the ADOT collector sidecar (pinned tag)."
  type        = string
  default     = "public.ecr.aws/aws-observability/aws-otel-collector:v0.43.3"
  nullable    = false

  validation {
    condition     = length(regexall("(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$", var.adot_image)) > 0 && !endswith(var.adot_image, ":latest")
    error_message = "adot_image needs a pinned tag or digest (not :latest)."
  }
}

################################################################################
# Logs
################################################################################

variable "log_retention_days" {
  description = "Days CloudWatch keeps the containers' logs (0: forever)."
  type        = number
  default     = 30
  nullable    = false

  validation {
    condition     = contains([0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of CloudWatch's values: 0 (never expire), 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}

variable "log_kms_key_arn" {
  description = "KMS key ARN to encrypt the log group with (its key policy must allow logs.<region>.amazonaws.com). null: CloudWatch's own encryption."
  type        = string
  default     = null

  validation {
    condition     = var.log_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.log_kms_key_arn))
    error_message = "log_kms_key_arn must be a KMS key ARN."
  }
}

################################################################################
# Service
################################################################################

variable "subnet_ids" {
  description = "Private subnets the tasks run in (no public IPs)."
  type        = list(string)
  nullable    = false

  validation {
    condition     = length(var.subnet_ids) >= 1
    error_message = "subnet_ids needs at least one subnet (one per AZ in practice)."
  }
}

variable "security_group_ids" {
  description = "Security groups of the tasks."
  type        = list(string)
  nullable    = false

  validation {
    condition     = length(var.security_group_ids) >= 1
    error_message = "security_group_ids needs at least one security group."
  }
}

variable "target_group_arn" {
  description = "ARN of the load balancer target group the service registers its tasks in (must already be attached to a listener)."
  type        = string
  nullable    = false
}

variable "desired_count" {
  description = "Tasks at creation. Afterwards Application Auto Scaling owns the count (changes here are ignored)."
  type        = number
  default     = 2
  nullable    = false

  validation {
    condition     = var.desired_count >= 0 && floor(var.desired_count) == var.desired_count
    error_message = "desired_count is a whole number, 0 or more."
  }
}

variable "health_check_grace_period_seconds" {
  description = "Seconds ECS ignores failing load balancer health checks of a new task (startup, migrations)."
  type        = number
  default     = 60
  nullable    = false

  validation {
    condition     = var.health_check_grace_period_seconds >= 0 && var.health_check_grace_period_seconds <= 2147483647
    error_message = "health_check_grace_period_seconds is 0 or more."
  }
}

variable "fargate_base" {
  description = "Tasks that always run on on-demand FARGATE before weights apply."
  type        = number
  default     = 2
  nullable    = false

  validation {
    condition     = var.fargate_base >= 0 && var.fargate_base <= 100000 && floor(var.fargate_base) == var.fargate_base
    error_message = "fargate_base is a whole number from 0 to 100000."
  }
}

variable "fargate_weight" {
  description = "Relative share of FARGATE (on-demand) for tasks beyond fargate_base."
  type        = number
  default     = 1
  nullable    = false

  validation {
    condition     = var.fargate_weight >= 0 && var.fargate_weight <= 1000 && floor(var.fargate_weight) == var.fargate_weight
    error_message = "fargate_weight is a whole number from 0 to 1000."
  }
}

variable "fargate_spot_weight" {
  description = "Relative share of FARGATE_SPOT for tasks beyond fargate_base. 0: no Spot. Spot tasks get 2 minutes' notice, more than the drain needs."
  type        = number
  default     = 0
  nullable    = false

  validation {
    condition     = var.fargate_spot_weight >= 0 && var.fargate_spot_weight <= 1000 && floor(var.fargate_spot_weight) == var.fargate_spot_weight
    error_message = "fargate_spot_weight is a whole number from 0 to 1000."
  }
}

variable "deployment_alarm_names" {
  description = "CloudWatch alarms that roll a deployment back when they fire during it (the proxy-errors alarm: the proxy's own failures, not the upstream's)."
  type        = list(string)
  default     = []
  nullable    = false
}

variable "deregistration_delay" {
  description = "The target group's deregistration delay (s): how long a deployment may wait for an old task to drain before ECS stops it. The service's update and delete timeouts are 20 minutes plus this."
  type        = number
  default     = 900
  nullable    = false

  validation {
    condition     = var.deregistration_delay >= 0 && var.deregistration_delay <= 3600
    error_message = "deregistration_delay is 0-3600 seconds (the target group's range)."
  }
}

variable "spill_efs" {
  description = "An EFS access point to mount at the spill directory (CLAUDE_PROXY_SPILL_DIR) instead of the task's ephemeral storage, so spilled request-log rows outlive the task: { file_system_id, access_point_id }. Mounted with TLS and the task role's IAM identity. null: ephemeral storage."
  type = object({
    file_system_id  = string
    access_point_id = string
  })
  default = null
}

variable "enable_execute_command" {
  description = "Allow ECS Exec into the tasks. It needs a writable root filesystem, so this also turns readonlyRootFilesystem off."
  type        = bool
  default     = false
  nullable    = false
}

variable "wait_for_steady_state" {
  description = "Make terraform apply wait until the deployment finished (and fail if it did not)."
  type        = bool
  default     = true
  nullable    = false
}

variable "tags" {
  description = "Tags added to every resource (on top of the provider's default_tags)."
  type        = map(string)
  default     = {}
  nullable    = false
}
