output "cluster_name" {
  description = "Name of the ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "cluster_arn" {
  description = "ARN of the ECS cluster."
  value       = aws_ecs_cluster.this.arn
}

output "cluster" {
  description = "The cluster (all attributes of the aws_ecs_cluster resource)."
  value       = aws_ecs_cluster.this
}

output "cluster_capacity_providers" {
  description = "The cluster's capacity providers."
  value       = aws_ecs_cluster_capacity_providers.this.capacity_providers
}

output "service_name" {
  description = "Name of the ECS service."
  value       = aws_ecs_service.this.name
}

output "service_id" {
  description = "ARN of the ECS service."
  value       = aws_ecs_service.this.id
}

output "service" {
  description = "The service (all attributes of the aws_ecs_service resource)."
  value       = aws_ecs_service.this
}

output "task_definition_arn" {
  description = "ARN (with revision) of the task definition."
  value       = aws_ecs_task_definition.this.arn
}

output "task_definition_family" {
  description = "Family of the task definition."
  value       = aws_ecs_task_definition.this.family
}

output "task_definition" {
  description = "The task definition (all attributes of the aws_ecs_task_definition resource)."
  value       = aws_ecs_task_definition.this
}

output "container_definitions" {
  description = "The task's container definitions (JSON)."
  value       = aws_ecs_task_definition.this.container_definitions
}

output "container_name" {
  description = "Name of the app container."
  value       = var.container_name
}

output "log_group_name" {
  description = "Name of the log group of the containers."
  value       = aws_cloudwatch_log_group.this.name
}

output "log_group_arn" {
  description = "ARN of the log group of the containers."
  value       = aws_cloudwatch_log_group.this.arn
}

output "log_group" {
  description = "The log group (all attributes of the aws_cloudwatch_log_group resource)."
  value       = aws_cloudwatch_log_group.this
}
