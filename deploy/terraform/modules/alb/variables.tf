variable "name" {
  description = "Name of the load balancer."
  type        = string
  default     = "claude-proxy-alb"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9]([A-Za-z0-9-]{0,30}[A-Za-z0-9])?$", var.name)) && !startswith(var.name, "internal-")
    error_message = "An ALB name is 1-32 letters, digits and hyphens, neither starting nor ending with a hyphen, nor starting with internal-."
  }
}

variable "target_group_name" {
  description = "Name of the target group."
  type        = string
  default     = "claude-proxy-tg"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9]([A-Za-z0-9-]{0,30}[A-Za-z0-9])?$", var.target_group_name))
    error_message = "A target group name is 1-32 letters, digits and hyphens, neither starting nor ending with a hyphen."
  }
}

variable "vpc_id" {
  description = "ID of the VPC of the target group."
  type        = string
  nullable    = false
}

variable "public_subnet_ids" {
  description = "Public subnets the internet-facing load balancer is placed in (at least two AZs)."
  type        = list(string)
  nullable    = false

  validation {
    condition     = length(var.public_subnet_ids) >= 2
    error_message = "An ALB needs subnets in at least two availability zones."
  }
}

variable "security_group_id" {
  description = "ID of the load balancer's security group."
  type        = string
  nullable    = false
}

variable "certificate_arn" {
  description = "ARN of the ACM certificate of the HTTPS listener (in the ALB's region)."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[0-9a-f-]+$", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN: arn:aws:acm:<region>:<account>:certificate/<id>."
  }
}

variable "additional_certificate_arns" {
  description = "More ACM certificates for the HTTPS listener (SNI), e.g. for a second host name."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for a in var.additional_certificate_arns : can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[0-9a-f-]+$", a))])
    error_message = "Every entry of additional_certificate_arns must be an ACM certificate ARN."
  }
}

variable "ssl_policy" {
  description = "Security policy of the HTTPS listener (TLS 1.3 and 1.2 only)."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  nullable    = false

  validation {
    condition     = startswith(var.ssl_policy, "ELBSecurityPolicy-")
    error_message = "ssl_policy is an ELB security policy name (ELBSecurityPolicy-...)."
  }
}

variable "idle_timeout" {
  description = "Seconds a connection may be idle before the ALB closes it. Keep it below the app's CLAUDE_PROXY_KEEPALIVE_SECONDS (310)."
  type        = number
  default     = 300
  nullable    = false

  validation {
    condition     = var.idle_timeout >= 1 && var.idle_timeout <= 4000
    error_message = "idle_timeout is 1-4000 seconds."
  }
}

variable "deregistration_delay" {
  description = "Seconds a deregistering target keeps serving its in-flight requests before ECS stops the task: the longest stream a deployment or scale-in lets finish. Above idle_timeout."
  type        = number
  default     = 900
  nullable    = false

  validation {
    condition     = var.deregistration_delay >= 0 && var.deregistration_delay <= 3600
    error_message = "deregistration_delay is 0-3600 seconds."
  }
}

variable "container_port" {
  description = "Port the targets (the containers) listen on."
  type        = number
  default     = 8000
  nullable    = false

  validation {
    condition     = var.container_port >= 1 && var.container_port <= 65535
    error_message = "container_port is a TCP port (1-65535)."
  }
}

variable "enable_deletion_protection" {
  description = "Refuse to delete the load balancer (set false, apply, then destroy)."
  type        = bool
  default     = true
  nullable    = false
}

variable "access_logs_bucket" {
  description = "Existing S3 bucket for ALB access logs (its policy must let the region's ELB account or logdelivery.elasticloadbalancing.amazonaws.com write). null: no access logs."
  type        = string
  default     = null

  validation {
    condition     = var.access_logs_bucket == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.access_logs_bucket))
    error_message = "access_logs_bucket is an S3 bucket name (not an ARN)."
  }
}

variable "access_logs_prefix" {
  description = "Key prefix of the access logs in the bucket."
  type        = string
  default     = "claude-proxy-alb"
  nullable    = false
}

variable "waf_web_acl_arn" {
  description = "ARN of a regional AWS WAF web ACL to associate with the load balancer. null: none."
  type        = string
  default     = null

  validation {
    condition     = var.waf_web_acl_arn == null || can(regex("^arn:aws[a-z-]*:wafv2:[a-z0-9-]+:[0-9]{12}:regional/webacl/.+$", var.waf_web_acl_arn))
    error_message = "waf_web_acl_arn must be a regional WAFv2 web ACL ARN: arn:aws:wafv2:<region>:<account>:regional/webacl/<name>/<id>."
  }
}

variable "tags" {
  description = "Tags added to every resource (on top of the provider's default_tags)."
  type        = map(string)
  default     = {}
  nullable    = false
}

variable "expose_internal_paths" {
  description = "Let /metrics and /ready through the ALB. Off: the ALB answers 404 for them (scrape them from inside the task)."
  type        = bool
  default     = false
  nullable    = false
}
