output "sns_topic_arn" {
  description = "ARN of the alarm topic (subscribe pagers or chat integrations to it)."
  value       = aws_sns_topic.alarms.arn
}

output "sns_topic_name" {
  description = "Name of the alarm topic."
  value       = aws_sns_topic.alarms.name
}

output "sns_topic" {
  description = "The alarm topic (all attributes of the aws_sns_topic resource)."
  value       = aws_sns_topic.alarms
}

output "sns_topic_policy" {
  description = "The alarm topic's access policy (JSON)."
  value       = aws_sns_topic_policy.alarms.policy
}

output "target_5xx_alarm_name" {
  description = "Name of the target 5xx-rate alarm (what clients see, upstream errors included)."
  value       = aws_cloudwatch_metric_alarm.target_5xx_rate.alarm_name
}

output "deployment_alarm_name" {
  description = "Name of the proxy-errors alarm: the ECS deployment rollback alarm (the proxy's own 5xx only)."
  value       = aws_cloudwatch_metric_alarm.proxy_errors.alarm_name
}

output "alarm_names" {
  description = "Names of all the alarms, by purpose."
  value = {
    target_5xx_rate = aws_cloudwatch_metric_alarm.target_5xx_rate.alarm_name
    proxy_errors    = aws_cloudwatch_metric_alarm.proxy_errors.alarm_name
    elb_5xx         = aws_cloudwatch_metric_alarm.elb_5xx.alarm_name
    cpu_high        = aws_cloudwatch_metric_alarm.cpu_high.alarm_name
    memory_high     = aws_cloudwatch_metric_alarm.memory_high.alarm_name
    unhealthy_hosts = aws_cloudwatch_metric_alarm.unhealthy_hosts.alarm_name
  }
}

output "alarms" {
  description = "All the alarms (every attribute of each aws_cloudwatch_metric_alarm), by purpose."
  value = {
    target_5xx_rate = aws_cloudwatch_metric_alarm.target_5xx_rate
    proxy_errors    = aws_cloudwatch_metric_alarm.proxy_errors
    elb_5xx         = aws_cloudwatch_metric_alarm.elb_5xx
    cpu_high        = aws_cloudwatch_metric_alarm.cpu_high
    memory_high     = aws_cloudwatch_metric_alarm.memory_high
    unhealthy_hosts = aws_cloudwatch_metric_alarm.unhealthy_hosts
  }
}

output "email_subscription" {
  description = "The email subscription (all attributes of the aws_sns_topic_subscription; pending until confirmed), or null."
  value       = one(aws_sns_topic_subscription.email[*])
}

output "budget_name" {
  description = "Name of the monthly budget, or null when disabled."
  value       = one(aws_budgets_budget.monthly[*].name)
}

output "budget" {
  description = "The monthly budget (all attributes of the aws_budgets_budget resource), or null when disabled."
  value       = one(aws_budgets_budget.monthly[*])
}
