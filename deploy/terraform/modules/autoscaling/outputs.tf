output "resource_id" {
  description = "Resource ID of the scalable target: service/<cluster>/<service>."
  value       = aws_appautoscaling_target.this.resource_id
}

output "target" {
  description = "The scalable target (all attributes of the aws_appautoscaling_target resource)."
  value       = aws_appautoscaling_target.this
}

output "cpu_policy" {
  description = "The CPU target tracking policy (all attributes)."
  value       = aws_appautoscaling_policy.cpu
}

output "active_streams_policy" {
  description = "The ActiveStreams target tracking policy (all attributes), or null when disabled."
  value       = one(aws_appautoscaling_policy.active_streams[*])
}

output "policy_names" {
  description = "Names of the scaling policies."
  value       = concat([aws_appautoscaling_policy.cpu.name], aws_appautoscaling_policy.active_streams[*].name)
}
