variable "name" {
  description = "Name of the key's alias: alias/<name>."
  type        = string
  default     = "claude-proxy"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9/_-]{1,250}$", var.name)) && !startswith(var.name, "aws/")
    error_message = "name is 1-250 letters, digits, slashes, underscores and hyphens, not starting with aws/."
  }
}

variable "description" {
  description = "Description of the key."
  type        = string
  default     = "claude-proxy: its CloudWatch log groups, the alarm topic and the spill file system"
  nullable    = false
}

variable "log_group_names" {
  description = "CloudWatch log groups (names) the key may encrypt: the key policy lets logs.<region>.amazonaws.com use it for these only."
  type        = list(string)
  default     = []
  nullable    = false
}

variable "sns_publisher_services" {
  description = "Service principals that publish to an SNS topic encrypted with the key (kms:Decrypt and kms:GenerateDataKey*)."
  type        = list(string)
  default     = ["cloudwatch.amazonaws.com", "budgets.amazonaws.com"]
  nullable    = false
}

variable "deletion_window_in_days" {
  description = "Days between terraform destroy (ScheduleKeyDeletion) and the key's deletion; it can be cancelled until then."
  type        = number
  default     = 30
  nullable    = false

  validation {
    condition     = var.deletion_window_in_days >= 7 && var.deletion_window_in_days <= 30 && floor(var.deletion_window_in_days) == var.deletion_window_in_days
    error_message = "deletion_window_in_days is a whole number from 7 to 30."
  }
}

variable "tags" {
  description = "Tags added to every resource (on top of the provider's default_tags)."
  type        = map(string)
  default     = {}
  nullable    = false
}
