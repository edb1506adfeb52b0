variable "name" {
  description = "Prefix of every resource's Name tag (and of the endpoints' security group name)."
  type        = string
  default     = "claude-proxy"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,30}$", var.name))
    error_message = "name is 1-31 lowercase letters, digits and hyphens."
  }
}

variable "vpc_cidr" {
  description = "IPv4 CIDR block of the VPC. The default subnet layout takes /20s out of a /16; a /16 to /22 works."
  type        = string
  default     = "10.0.0.0/16"
  nullable    = false

  validation {
    condition = (
      can(cidrhost(var.vpc_cidr, 0)) &&
      tonumber(split("/", var.vpc_cidr)[1]) >= 16 &&
      tonumber(split("/", var.vpc_cidr)[1]) <= 22
    )
    error_message = "vpc_cidr must be an IPv4 CIDR block from /16 (the largest a VPC allows) to /22."
  }
}

variable "az_count" {
  description = "Number of availability zones to spread the public and private subnets over (the ALB needs at least 2)."
  type        = number
  default     = 2
  nullable    = false

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 6 && floor(var.az_count) == var.az_count
    error_message = "az_count is a whole number from 2 to 6."
  }
}

variable "availability_zones" {
  description = "Availability zone names to use, in order (the first az_count). Empty: the region's zones that need no opt-in, alphabetically."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for z in var.availability_zones : can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9][a-z]$", z))])
    error_message = "availability_zones are zone names such as eu-west-1a."
  }
}

variable "public_subnet_cidrs" {
  description = "Explicit CIDR blocks of the public subnets, one per AZ. Empty: computed from vpc_cidr."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for c in var.public_subnet_cidrs : can(cidrhost(c, 0))])
    error_message = "Every entry of public_subnet_cidrs must be an IPv4 CIDR block."
  }
}

variable "private_subnet_cidrs" {
  description = "Explicit CIDR blocks of the private subnets, one per AZ. Empty: computed from vpc_cidr."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for c in var.private_subnet_cidrs : can(cidrhost(c, 0))])
    error_message = "Every entry of private_subnet_cidrs must be an IPv4 CIDR block."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all AZs (cheaper; egress depends on that one AZ) instead of one per AZ."
  type        = bool
  default     = false
  nullable    = false
}

variable "enable_interface_endpoints" {
  description = "Create interface VPC endpoints (interface_endpoint_services) in the private subnets, with their own security group."
  type        = bool
  default     = false
  nullable    = false
}

variable "interface_endpoint_services" {
  description = "Services to create interface endpoints for when enable_interface_endpoints is true."
  type        = list(string)
  default     = ["ecr.api", "ecr.dkr", "logs", "secretsmanager"]
  nullable    = false

  validation {
    condition     = alltrue([for s in var.interface_endpoint_services : can(regex("^[a-z0-9.-]+$", s))])
    error_message = "Service names are short endpoint names such as ecr.api or logs (without com.amazonaws.<region>.)."
  }
}

variable "enable_flow_logs" {
  description = "Send the VPC's flow logs (all traffic) to the CloudWatch log group /vpc/<name>-flow-logs."
  type        = bool
  default     = false
  nullable    = false
}

variable "flow_logs_retention_days" {
  description = "Days CloudWatch keeps the flow logs."
  type        = number
  default     = 30
  nullable    = false

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.flow_logs_retention_days)
    error_message = "flow_logs_retention_days must be one of CloudWatch's retention values (1, 3, 5, 7, 14, 30, 60, 90, ...)."
  }
}

variable "flow_logs_kms_key_arn" {
  description = "KMS key ARN to encrypt the flow logs' log group with (its key policy must allow logs.<region>.amazonaws.com). null: CloudWatch's own encryption."
  type        = string
  default     = null

  validation {
    condition     = var.flow_logs_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.flow_logs_kms_key_arn))
    error_message = "flow_logs_kms_key_arn must be a KMS key ARN."
  }
}

variable "tags" {
  description = "Tags added to every resource (on top of the provider's default_tags)."
  type        = map(string)
  default     = {}
  nullable    = false
}
