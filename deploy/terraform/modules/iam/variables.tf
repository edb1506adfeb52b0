variable "name" {
  description = "Prefix of the roles' names: <name>-execution and <name>-task."
  type        = string
  default     = "claude-proxy"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9+=,.@_-]{1,54}$", var.name))
    error_message = "name is 1-54 characters of IAM's role-name alphabet (letters, digits, +=,.@_-)."
  }
}

variable "ecr_repository_arn" {
  description = "ARN of the ECR repository the execution role may pull the image from."
  type        = string
  nullable    = false
}

variable "log_group_arn" {
  description = "ARN of the CloudWatch log group the execution role may write the containers' logs to."
  type        = string
  nullable    = false
}

variable "secret_arns" {
  description = "Full ARNs of the Secrets Manager secrets the execution role may read (and only these)."
  type        = list(string)
  nullable    = false

  validation {
    condition = length(var.secret_arns) > 0 && alltrue([
      for a in var.secret_arns : can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+-[A-Za-z0-9]{6}$", a))
    ])
    error_message = "secret_arns are full Secrets Manager ARNs, including the 6-character suffix: arn:aws:secretsmanager:<region>:<account>:secret:<name>-AbCdEf."
  }
}

variable "secrets_kms_key_arn" {
  description = "Customer-managed KMS key the secrets are encrypted with: the execution role gets kms:Decrypt on it (through Secrets Manager only). null: the secrets use the AWS-managed key and no KMS permission is needed."
  type        = string
  default     = null

  validation {
    condition     = var.secrets_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.secrets_kms_key_arn))
    error_message = "secrets_kms_key_arn must be a KMS key ARN: arn:aws:kms:<region>:<account>:key/<id>."
  }
}

variable "enable_adot" {
  description = "Give the task role X-Ray write permissions, for the ADOT collector sidecar."
  type        = bool
  default     = false
  nullable    = false
}

variable "spill_efs" {
  description = "The spill file system the task role may mount and write, through its access point only: { file_system_arn, access_point_arn }. null: none."
  type = object({
    file_system_arn  = string
    access_point_arn = string
  })
  default = null
}

variable "enable_execute_command" {
  description = "Give the task role the SSM messages permissions ECS Exec needs."
  type        = bool
  default     = false
  nullable    = false
}

variable "tags" {
  description = "Tags added to every resource (on top of the provider's default_tags)."
  type        = map(string)
  default     = {}
  nullable    = false
}
