################################################################################
# Account and region
################################################################################

variable "aws_region" {
  description = "Region of the state bucket and of the production deployment (the repository variable AWS_REGION)."
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
  description = "Tags on every resource, through the provider's default_tags (Project, Environment, ManagedBy and Component are always set)."
  type        = map(string)
  default     = {}
  nullable    = false
}

################################################################################
# GitHub
################################################################################

variable "github_owner" {
  description = "Owner (user or organisation) of the GitHub repository that deploys, exactly as GitHub spells it: the OIDC subject is case-sensitive."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9](-?[A-Za-z0-9])*$", var.github_owner))
    error_message = "github_owner is a GitHub user or organisation name (letters, digits, single hyphens)."
  }
}

variable "github_repository" {
  description = "Name of the GitHub repository that deploys, without its owner (claude-proxy, not acme/claude-proxy)."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+$", var.github_repository)) && !strcontains(var.github_repository, "/")
    error_message = "github_repository is the repository's name alone, without the owner."
  }
}

variable "create_oidc_provider" {
  description = "Create the account's GitHub OIDC provider (token.actions.githubusercontent.com). false: use the one the account already has (an account holds one per URL)."
  type        = bool
  default     = true
  nullable    = false
}

################################################################################
# Terraform state
################################################################################

variable "state_bucket_name" {
  description = "Name of the S3 bucket for the Terraform state (globally unique; the repository variable TF_STATE_BUCKET)."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.state_bucket_name)) && !strcontains(var.state_bucket_name, "..")
    error_message = "state_bucket_name must be a valid S3 bucket name: 3-63 lowercase letters, digits, dots and hyphens."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days the bucket keeps a state file's previous versions (the way back from a bad apply or a corrupted state)."
  type        = number
  default     = 90
  nullable    = false

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && floor(var.noncurrent_version_expiration_days) == var.noncurrent_version_expiration_days
    error_message = "noncurrent_version_expiration_days is a whole number of days, at least 1."
  }
}
