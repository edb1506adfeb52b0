variable "name" {
  description = "Prefix of the scaling policies' names: <name>-cpu-target and <name>-active-streams-target."
  type        = string
  default     = "claude-proxy"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,200}$", var.name))
    error_message = "name is 1-200 letters, digits, hyphens and underscores."
  }
}

variable "cluster_name" {
  description = "Name of the ECS cluster of the service."
  type        = string
  nullable    = false
}

variable "service_name" {
  description = "Name of the ECS service to scale (also the ServiceName dimension of the app's metrics)."
  type        = string
  nullable    = false
}

variable "min_capacity" {
  description = "Fewest tasks (2: one per AZ, and a deploy or a failure never leaves one task)."
  type        = number
  default     = 2
  nullable    = false

  validation {
    condition     = var.min_capacity >= 1 && floor(var.min_capacity) == var.min_capacity
    error_message = "min_capacity is a whole number, at least 1."
  }
}

variable "max_capacity" {
  description = "Most tasks. Size the database connections for it (docs: db_pool_size)."
  type        = number
  default     = 10
  nullable    = false

  validation {
    condition     = var.max_capacity >= 1 && floor(var.max_capacity) == var.max_capacity
    error_message = "max_capacity is a whole number, at least 1."
  }
}

variable "cpu_target_value" {
  description = "Average CPU utilization (%) of the service that the CPU policy keeps."
  type        = number
  default     = 70
  nullable    = false

  validation {
    condition     = var.cpu_target_value > 0 && var.cpu_target_value <= 100
    error_message = "cpu_target_value is a percentage above 0, at most 100."
  }
}

variable "scale_out_cooldown" {
  description = "Seconds after a scale-out before the next one."
  type        = number
  default     = 60
  nullable    = false

  validation {
    condition     = var.scale_out_cooldown >= 0
    error_message = "scale_out_cooldown is 0 or more seconds."
  }
}

variable "scale_in_cooldown" {
  description = "Seconds after a scale-in (or scale-out) before the next scale-in."
  type        = number
  default     = 300
  nullable    = false

  validation {
    condition     = var.scale_in_cooldown >= 0
    error_message = "scale_in_cooldown is 0 or more seconds."
  }
}

variable "enable_active_streams_scaling" {
  description = "Also track the app's ActiveStreams metric (average per task), next to CPU."
  type        = bool
  default     = false
  nullable    = false
}

variable "active_streams_target" {
  description = "Average open streams per task that the ActiveStreams policy keeps."
  type        = number
  default     = 100
  nullable    = false

  validation {
    condition     = var.active_streams_target > 0
    error_message = "active_streams_target must be above 0."
  }
}

variable "metrics_namespace" {
  description = "CloudWatch namespace of the app's EMF metrics (CLAUDE_PROXY_EMF_NAMESPACE)."
  type        = string
  default     = "ClaudeProxy"
  nullable    = false

  validation {
    condition     = length(var.metrics_namespace) > 0 && !startswith(var.metrics_namespace, "AWS/")
    error_message = "metrics_namespace is a custom namespace (not AWS/...)."
  }
}

variable "tags" {
  description = "Tags added to every resource (on top of the provider's default_tags)."
  type        = map(string)
  default     = {}
  nullable    = false
}
