variable "name" {
  description = "Prefix of the topic (<name>-alarms), the alarms (<name>-target-5xx-rate, ...) and the budget (<name>-monthly)."
  type        = string
  default     = "claude-proxy"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,200}$", var.name))
    error_message = "name is 1-200 letters, digits, hyphens and underscores."
  }
}

variable "alb_arn_suffix" {
  description = "ARN suffix of the load balancer (LoadBalancer dimension)."
  type        = string
  nullable    = false
}

variable "target_group_arn_suffix" {
  description = "ARN suffix of the target group (TargetGroup dimension)."
  type        = string
  nullable    = false
}

variable "cluster_name" {
  description = "Name of the ECS cluster (ClusterName dimension)."
  type        = string
  nullable    = false
}

variable "service_name" {
  description = "Name of the ECS service (ServiceName dimension)."
  type        = string
  nullable    = false
}

variable "alarm_email" {
  description = "Email address subscribed to the alarm topic (confirm the subscription from AWS's email). null: none; subscribe something else to the topic."
  type        = string
  default     = null

  validation {
    condition     = var.alarm_email == null || can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", var.alarm_email))
    error_message = "alarm_email must be an email address."
  }
}

variable "sns_kms_key_arn" {
  description = "Customer-managed KMS key to encrypt the topic with; its key policy must allow cloudwatch.amazonaws.com and budgets.amazonaws.com kms:Decrypt and kms:GenerateDataKey*. null: unencrypted (not the aws/sns key, which CloudWatch cannot use)."
  type        = string
  default     = null

  validation {
    condition     = var.sns_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key|alias)/.+$", var.sns_kms_key_arn))
    error_message = "sns_kms_key_arn must be a KMS key or alias ARN."
  }
}

variable "target_5xx_rate_threshold" {
  description = "Percentage of requests answered 5xx by the tasks above which the target 5xx-rate alarm fires."
  type        = number
  default     = 1
  nullable    = false

  validation {
    condition     = var.target_5xx_rate_threshold > 0 && var.target_5xx_rate_threshold <= 100
    error_message = "target_5xx_rate_threshold is a percentage above 0, at most 100."
  }
}

variable "target_5xx_evaluation_periods" {
  description = "Consecutive 1-minute periods above the threshold before the target 5xx-rate alarm fires."
  type        = number
  default     = 3
  nullable    = false

  validation {
    condition     = var.target_5xx_evaluation_periods >= 1 && var.target_5xx_evaluation_periods <= 60 && floor(var.target_5xx_evaluation_periods) == var.target_5xx_evaluation_periods
    error_message = "target_5xx_evaluation_periods is a whole number from 1 to 60."
  }
}

variable "proxy_error_rate_threshold" {
  description = "Percentage of requests answered with a 5xx the proxy made itself (EMF ProxyErrors / RequestCount) above which the proxy-errors alarm, the deployment rollback alarm, fires."
  type        = number
  default     = 1
  nullable    = false

  validation {
    condition     = var.proxy_error_rate_threshold > 0 && var.proxy_error_rate_threshold <= 100
    error_message = "proxy_error_rate_threshold is a percentage above 0, at most 100."
  }
}

variable "proxy_errors_evaluation_periods" {
  description = "Consecutive 1-minute periods above the threshold before the proxy-errors alarm fires."
  type        = number
  default     = 3
  nullable    = false

  validation {
    condition     = var.proxy_errors_evaluation_periods >= 1 && var.proxy_errors_evaluation_periods <= 60 && floor(var.proxy_errors_evaluation_periods) == var.proxy_errors_evaluation_periods
    error_message = "proxy_errors_evaluation_periods is a whole number from 1 to 60."
  }
}

variable "emf_namespace" {
  description = "CloudWatch namespace of the proxy's EMF metrics (CLAUDE_PROXY_EMF_NAMESPACE, ClaudeProxy by default)."
  type        = string
  default     = "ClaudeProxy"
  nullable    = false

  validation {
    condition     = length(var.emf_namespace) > 0 && length(var.emf_namespace) <= 255
    error_message = "emf_namespace is a CloudWatch namespace of 1-255 characters."
  }
}

variable "elb_5xx_threshold" {
  description = "Load balancer 5xx responses in 5 minutes above which the ELB 5xx alarm fires."
  type        = number
  default     = 10
  nullable    = false

  validation {
    condition     = var.elb_5xx_threshold >= 0
    error_message = "elb_5xx_threshold is 0 or more."
  }
}

variable "cpu_high_threshold" {
  description = "Service average CPU (%) above which, for 5 minutes, the CPU alarm fires."
  type        = number
  default     = 85
  nullable    = false

  validation {
    condition     = var.cpu_high_threshold > 0 && var.cpu_high_threshold <= 100
    error_message = "cpu_high_threshold is a percentage above 0, at most 100."
  }
}

variable "memory_high_threshold" {
  description = "Memory (% of task_memory) of the fullest task above which, for 5 minutes, the memory alarm fires."
  type        = number
  default     = 85
  nullable    = false

  validation {
    condition     = var.memory_high_threshold > 0 && var.memory_high_threshold <= 100
    error_message = "memory_high_threshold is a percentage above 0, at most 100."
  }
}

variable "enable_budget" {
  description = "Create the monthly AWS Budget."
  type        = bool
  default     = true
  nullable    = false
}

variable "monthly_budget_usd" {
  description = "Monthly cost budget in USD."
  type        = number
  default     = 500
  nullable    = false

  validation {
    condition     = var.monthly_budget_usd > 0
    error_message = "monthly_budget_usd must be above 0."
  }
}

variable "budget_actual_thresholds" {
  description = "Percentages of the budget actually spent that notify the topic."
  type        = list(number)
  default     = [80, 100]
  nullable    = false

  validation {
    condition     = alltrue([for t in var.budget_actual_thresholds : t > 0])
    error_message = "Budget thresholds are percentages above 0."
  }
}

variable "budget_forecasted_thresholds" {
  description = "Percentages of the budget forecast to be spent by the month's end that notify the topic."
  type        = list(number)
  default     = [100]
  nullable    = false

  validation {
    condition     = alltrue([for t in var.budget_forecasted_thresholds : t > 0])
    error_message = "Budget thresholds are percentages above 0."
  }
}

variable "budget_cost_filter_tags" {
  description = "Restrict the budget to costs with these tags (activated as cost allocation tags), e.g. { Project = \"claude-proxy\" }. Empty: the whole account."
  type        = map(string)
  default     = {}
  nullable    = false
}

variable "tags" {
  description = "Tags added to every resource (on top of the provider's default_tags)."
  type        = map(string)
  default     = {}
  nullable    = false
}
