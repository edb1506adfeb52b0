output "execution_role_arn" {
  description = "ARN of the task execution role. Known only once its policy is attached, so that no task starts without it."
  value       = aws_iam_role.execution.arn

  depends_on = [aws_iam_role_policy.execution]
}

output "execution_role_name" {
  description = "Name of the task execution role."
  value       = aws_iam_role.execution.name
}

output "task_role_arn" {
  description = "ARN of the task role. Known only once its policy (if any) is attached."
  value       = aws_iam_role.task.arn

  depends_on = [aws_iam_role_policy.task]
}

output "task_role_name" {
  description = "Name of the task role."
  value       = aws_iam_role.task.name
}

output "execution_role_policy" {
  description = "The execution role's inline policy document (JSON)."
  value       = aws_iam_role_policy.execution.policy
}

output "task_role_policy" {
  description = "The task role's inline policy document (JSON), or null when it has none."
  value       = one(aws_iam_role_policy.task[*].policy)
}

output "execution_role" {
  description = "The execution role (all attributes of the aws_iam_role resource)."
  value       = aws_iam_role.execution
}

output "task_role" {
  description = "The task role (all attributes of the aws_iam_role resource)."
  value       = aws_iam_role.task
}
