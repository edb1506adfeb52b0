output "alb_security_group_id" {
  description = "ID of the load balancer's security group (<name>-alb-sg)."
  value       = aws_security_group.alb.id
}

output "alb_security_group_name" {
  description = "Name of the load balancer's security group."
  value       = aws_security_group.alb.name
}

output "task_security_group_id" {
  description = "ID of the tasks' security group (<name>-task-sg)."
  value       = aws_security_group.task.id
}

output "task_security_group_name" {
  description = "Name of the tasks' security group."
  value       = aws_security_group.task.name
}

output "alb_ingress_rules" {
  description = "The load balancer's ingress rules (every attribute of each rule)."
  value       = values(aws_vpc_security_group_ingress_rule.alb)
}

output "alb_egress_rules" {
  description = "The load balancer's egress rules (every attribute of each rule): only the tasks' port."
  value       = [aws_vpc_security_group_egress_rule.alb_to_task]
}

output "task_ingress_rules" {
  description = "The tasks' ingress rules (every attribute of each rule): only from the load balancer."
  value       = [aws_vpc_security_group_ingress_rule.task_from_alb]
}

output "task_egress_rules" {
  description = "The tasks' egress rules (every attribute of each rule): HTTPS and PostgreSQL."
  value       = concat([aws_vpc_security_group_egress_rule.task_https], values(aws_vpc_security_group_egress_rule.task_database))
}
