variable "name" {
  description = "Prefix of the names: the file system's creation token <name>-spill, the security group <name>-efs-sg."
  type        = string
  default     = "claude-proxy"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,30}$", var.name))
    error_message = "name is 1-31 lowercase letters, digits and hyphens."
  }
}

variable "vpc_id" {
  description = "ID of the VPC of the mount targets."
  type        = string
  nullable    = false
}

variable "subnet_ids" {
  description = "Subnets to put a mount target in: the tasks' private subnets, one per AZ."
  type        = list(string)
  nullable    = false

  validation {
    condition     = length(var.subnet_ids) >= 1
    error_message = "subnet_ids needs at least one subnet (one per AZ the tasks run in)."
  }
}

variable "task_security_group_id" {
  description = "Security group of the tasks: the only source NFS is accepted from (this module also adds its egress rule to the mount targets)."
  type        = string
  nullable    = false
}

variable "kms_key_arn" {
  description = "Customer-managed KMS key to encrypt the file system with. null: the AWS-managed aws/elasticfilesystem key. Changing it replaces the file system."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN: arn:aws:kms:<region>:<account>:key/<id>."
  }
}

variable "posix_uid" {
  description = "User ID every operation through the access point runs as: the image's user (10001)."
  type        = number
  default     = 10001
  nullable    = false

  validation {
    condition     = var.posix_uid >= 0 && floor(var.posix_uid) == var.posix_uid
    error_message = "posix_uid is a whole number, 0 or more."
  }
}

variable "posix_gid" {
  description = "Group ID every operation through the access point runs as: the image's group (10001)."
  type        = number
  default     = 10001
  nullable    = false

  validation {
    condition     = var.posix_gid >= 0 && floor(var.posix_gid) == var.posix_gid
    error_message = "posix_gid is a whole number, 0 or more."
  }
}

variable "root_directory" {
  description = "Directory of the file system the access point exposes (created, owned by posix_uid:posix_gid, mode 0750, on first use)."
  type        = string
  default     = "/spill"
  nullable    = false

  validation {
    condition     = startswith(var.root_directory, "/") && var.root_directory != "/"
    error_message = "root_directory is an absolute path below /."
  }
}

variable "tags" {
  description = "Tags added to every resource (on top of the provider's default_tags)."
  type        = map(string)
  default     = {}
  nullable    = false
}
