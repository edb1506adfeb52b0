locals {
  # Supabase: 5432 is the direct connection and the session pooler, 6543 the transaction
  # pooler. Supabase is outside the VPC, so the tasks reach it through the NAT gateways.
  database_ports = {
    postgres = { port = 5432, description = "PostgreSQL: Supabase direct connection / session pooler" }
    pooler   = { port = 6543, description = "PostgreSQL: Supabase transaction pooler" }
  }

  database_rules = {
    for pair in setproduct(keys(local.database_ports), var.database_cidr_blocks) :
    "${pair[0]}-${pair[1]}" => {
      port        = local.database_ports[pair[0]].port
      description = local.database_ports[pair[0]].description
      cidr        = pair[1]
    }
  }

  alb_ingress_rules = {
    for pair in setproduct(["80", "443"], var.alb_ingress_cidr_blocks) :
    "${pair[0]}-${pair[1]}" => {
      port        = tonumber(pair[0])
      description = pair[0] == "80" ? "HTTP from clients (redirected to HTTPS)" : "HTTPS from clients"
      cidr        = pair[1]
    }
  }
}

################################################################################
# Security groups
#
# The pair fences the tasks in: clients reach only the ALB, the ALB reaches only the tasks'
# port, and the tasks accept nothing but the ALB. Every rule is its own resource (one per
# port and CIDR) with a description, so a change shows up as exactly one rule in the plan.
# The groups keep fixed names (the runbook cites them), so they cannot be replaced
# create-before-destroy: leave their name and description alone once they exist.
################################################################################

resource "aws_security_group" "alb" {
  # checkov:skip=CKV2_AWS_5: attached by the caller (the ALB), through this module's outputs
  name        = "${var.name}-alb-sg"
  description = "${var.name} load balancer: HTTP/HTTPS from clients, out only to the tasks"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-alb-sg" })
}

resource "aws_security_group" "task" {
  # checkov:skip=CKV2_AWS_5: attached by the caller (the ECS service), through this module's outputs
  name        = "${var.name}-task-sg"
  description = "${var.name} tasks: in only from the load balancer, out to HTTPS and PostgreSQL"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-task-sg" })
}

################################################################################
# Load balancer rules
################################################################################

resource "aws_vpc_security_group_ingress_rule" "alb" {
  for_each = local.alb_ingress_rules

  security_group_id = aws_security_group.alb.id
  description       = each.value.description
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr

  tags = merge(var.tags, { Name = "${var.name}-alb-in-${each.value.port}" })
}

resource "aws_vpc_security_group_egress_rule" "alb_to_task" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the tasks' container port (traffic and health checks)"
  ip_protocol                  = "tcp"
  from_port                    = var.container_port
  to_port                      = var.container_port
  referenced_security_group_id = aws_security_group.task.id

  tags = merge(var.tags, { Name = "${var.name}-alb-out-task" })
}

################################################################################
# Task rules
################################################################################

resource "aws_vpc_security_group_ingress_rule" "task_from_alb" {
  security_group_id            = aws_security_group.task.id
  description                  = "From the load balancer only"
  ip_protocol                  = "tcp"
  from_port                    = var.container_port
  to_port                      = var.container_port
  referenced_security_group_id = aws_security_group.alb.id

  tags = merge(var.tags, { Name = "${var.name}-task-in-alb" })
}

# The Anthropic API, ECR, CloudWatch Logs, Secrets Manager, X-Ray: all HTTPS.
resource "aws_vpc_security_group_egress_rule" "task_https" {
  security_group_id = aws_security_group.task.id
  description       = "HTTPS: the Anthropic API and the AWS APIs (ECR, Logs, Secrets Manager)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"

  tags = merge(var.tags, { Name = "${var.name}-task-out-https" })
}

resource "aws_vpc_security_group_egress_rule" "task_database" {
  for_each = local.database_rules

  security_group_id = aws_security_group.task.id
  description       = each.value.description
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr

  tags = merge(var.tags, { Name = "${var.name}-task-out-${each.value.port}" })
}
