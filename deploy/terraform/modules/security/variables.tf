variable "name" {
  description = "Prefix of the security groups' names: <name>-alb-sg and <name>-task-sg."
  type        = string
  default     = "claude-proxy"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,30}$", var.name))
    error_message = "name is 1-31 lowercase letters, digits and hyphens."
  }
}

variable "vpc_id" {
  description = "ID of the VPC the security groups belong to."
  type        = string
  nullable    = false
}

variable "container_port" {
  description = "Port the container listens on: the only port the ALB may send to and the tasks accept."
  type        = number
  default     = 8000
  nullable    = false

  validation {
    condition     = var.container_port >= 1 && var.container_port <= 65535 && floor(var.container_port) == var.container_port
    error_message = "container_port is a TCP port (1-65535)."
  }
}

variable "alb_ingress_cidr_blocks" {
  description = "IPv4 CIDR blocks allowed to reach the load balancer on 80 and 443. Narrow it to restrict the proxy to known networks."
  type        = list(string)
  default     = ["0.0.0.0/0"]
  nullable    = false

  validation {
    condition     = length(var.alb_ingress_cidr_blocks) > 0 && alltrue([for c in var.alb_ingress_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "alb_ingress_cidr_blocks needs at least one IPv4 CIDR block."
  }
}

variable "database_cidr_blocks" {
  description = "IPv4 CIDR blocks the tasks may reach on 5432 and 6543 (PostgreSQL). Supabase is outside the VPC with changing addresses, hence 0.0.0.0/0 by default."
  type        = list(string)
  default     = ["0.0.0.0/0"]
  nullable    = false

  validation {
    condition     = length(var.database_cidr_blocks) > 0 && alltrue([for c in var.database_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "database_cidr_blocks needs at least one IPv4 CIDR block."
  }
}

variable "tags" {
  description = "Tags added to every resource (on top of the provider's default_tags)."
  type        = map(string)
  default     = {}
  nullable    = false
}
