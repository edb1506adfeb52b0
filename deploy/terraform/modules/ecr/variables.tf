variable "name" {
  description = "Name of the ECR repository."
  type        = string
  default     = "claude-proxy"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$", var.name)) && length(var.name) >= 2 && length(var.name) <= 256
    error_message = "An ECR repository name is 2-256 lowercase letters, digits, and . _ - / separators."
  }
}

variable "keep_last_images" {
  description = "How many images to keep (the newest; older ones expire). They are the possible rollback targets."
  type        = number
  default     = 30
  nullable    = false

  validation {
    condition     = var.keep_last_images >= 1 && floor(var.keep_last_images) == var.keep_last_images
    error_message = "keep_last_images is a whole number, at least 1."
  }
}

variable "untagged_image_expiry_days" {
  description = "Days after which untagged images (e.g. an interrupted push's leftovers) expire."
  type        = number
  default     = 7
  nullable    = false

  validation {
    condition     = var.untagged_image_expiry_days >= 1 && floor(var.untagged_image_expiry_days) == var.untagged_image_expiry_days
    error_message = "untagged_image_expiry_days is a whole number of days, at least 1."
  }
}

variable "kms_key_arn" {
  description = "Customer-managed KMS key ARN to encrypt images with. null: the AWS-managed aws/ecr key."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN: arn:aws:kms:<region>:<account>:key/<id>."
  }
}

variable "force_delete" {
  description = "Let terraform destroy delete the repository with its images in it."
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
