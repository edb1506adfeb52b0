data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name

  alarm_actions = [aws_sns_topic.alarms.arn]
}

################################################################################
# SNS topic (every alarm and the budget notify it)
################################################################################

resource "aws_sns_topic" "alarms" {
  name = "${var.name}-alarms"

  # A customer-managed key whose policy lets cloudwatch.amazonaws.com and
  # budgets.amazonaws.com use it; the AWS-managed aws/sns key would silently drop them.
  kms_master_key_id = var.sns_kms_key_arn

  tags = var.tags
}

resource "aws_sns_topic_policy" "alarms" {
  arn = aws_sns_topic.alarms.arn

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministration"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
        Action = [
          "SNS:AddPermission",
          "SNS:DeleteTopic",
          "SNS:GetTopicAttributes",
          "SNS:ListSubscriptionsByTopic",
          "SNS:Publish",
          "SNS:RemovePermission",
          "SNS:SetTopicAttributes",
          "SNS:Subscribe",
        ]
        Resource = aws_sns_topic.alarms.arn
      },
      {
        Sid       = "CloudWatchAlarms"
        Effect    = "Allow"
        Principal = { Service = "cloudwatch.amazonaws.com" }
        Action    = "SNS:Publish"
        Resource  = aws_sns_topic.alarms.arn
        Condition = {
          StringEquals = { "aws:SourceAccount" = local.account_id }
          ArnLike      = { "aws:SourceArn" = "arn:${local.partition}:cloudwatch:${local.region}:${local.account_id}:alarm:*" }
        }
      },
      {
        Sid       = "Budgets"
        Effect    = "Allow"
        Principal = { Service = "budgets.amazonaws.com" }
        Action    = "SNS:Publish"
        Resource  = aws_sns_topic.alarms.arn
        Condition = {
          StringEquals = { "aws:SourceAccount" = local.account_id }
          ArnLike      = { "aws:SourceArn" = "arn:${local.partition}:budgets::${local.account_id}:*" }
        }
      },
    ]
  })
}

# Email subscriptions stay "pending confirmation" until the link in AWS's email is clicked.
resource "aws_sns_topic_subscription" "email" {
  count = var.alarm_email == null ? 0 : 1

  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

################################################################################
# Target 5xx rate (what clients see: the upstream's 5xx and 529 passed through count)
################################################################################

resource "aws_cloudwatch_metric_alarm" "target_5xx_rate" {
  alarm_name          = "${var.name}-target-5xx-rate"
  alarm_description   = "More than ${var.target_5xx_rate_threshold}% of requests got a 5xx from the tasks in ${var.target_5xx_evaluation_periods} consecutive minutes. Upstream 5xx/529 passed through by the proxy count too, so an Anthropic outage fires it: it notifies, it does not roll deployments back."
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.target_5xx_rate_threshold
  evaluation_periods  = var.target_5xx_evaluation_periods
  datapoints_to_alarm = var.target_5xx_evaluation_periods
  treat_missing_data  = "notBreaching"

  metric_query {
    id          = "rate"
    label       = "Target 5xx (% of requests)"
    expression  = "100 * FILL(errors, 0) / requests"
    return_data = true
  }

  metric_query {
    id          = "errors"
    return_data = false

    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_Target_5XX_Count"
      period      = 60
      stat        = "Sum"
      dimensions  = { LoadBalancer = var.alb_arn_suffix }
    }
  }

  metric_query {
    id          = "requests"
    return_data = false

    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "RequestCount"
      period      = 60
      stat        = "Sum"
      dimensions  = { LoadBalancer = var.alb_arn_suffix }
    }
  }

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions

  tags = var.tags
}

################################################################################
# The proxy's own errors (the ECS deployment's rollback alarm)
################################################################################

# From the EMF lines each task prints (namespace ClaudeProxy, dimension ServiceName):
# ProxyErrors counts the 5xx the proxy made itself, without an upstream attempt (not the
# upstream's 5xx or 529, not the open circuit breaker's 529), RequestCount every request.
# An Anthropic outage during a deployment leaves it quiet, so it never rolls a good
# release back; a release that breaks the proxy fires it.
resource "aws_cloudwatch_metric_alarm" "proxy_errors" {
  alarm_name          = "${var.name}-proxy-errors"
  alarm_description   = "More than ${var.proxy_error_rate_threshold}% of requests got a 5xx made by the proxy itself (EMF ProxyErrors / RequestCount) in ${var.proxy_errors_evaluation_periods} consecutive minutes. Rolls back an ECS deployment in progress."
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.proxy_error_rate_threshold
  evaluation_periods  = var.proxy_errors_evaluation_periods
  datapoints_to_alarm = var.proxy_errors_evaluation_periods
  treat_missing_data  = "notBreaching"

  metric_query {
    id          = "rate"
    label       = "Proxy errors (% of requests)"
    expression  = "100 * FILL(errors, 0) / requests"
    return_data = true
  }

  metric_query {
    id          = "errors"
    return_data = false

    metric {
      namespace   = var.emf_namespace
      metric_name = "ProxyErrors"
      period      = 60
      stat        = "Sum"
      dimensions  = { ServiceName = var.service_name }
    }
  }

  metric_query {
    id          = "requests"
    return_data = false

    metric {
      namespace   = var.emf_namespace
      metric_name = "RequestCount"
      period      = 60
      stat        = "Sum"
      dimensions  = { ServiceName = var.service_name }
    }
  }

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions

  tags = var.tags
}

################################################################################
# Load balancer 5xx (the ALB's own: no healthy target, target connection errors, timeouts)
################################################################################

resource "aws_cloudwatch_metric_alarm" "elb_5xx" {
  alarm_name          = "${var.name}-elb-5xx"
  alarm_description   = "The load balancer itself answered more than ${var.elb_5xx_threshold} 5xx in 5 minutes (502/503/504: no healthy task, connections refused or reset, timeouts)."
  namespace           = "AWS/ApplicationELB"
  metric_name         = "HTTPCode_ELB_5XX_Count"
  dimensions          = { LoadBalancer = var.alb_arn_suffix }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.elb_5xx_threshold
  treat_missing_data  = "notBreaching"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions

  tags = var.tags
}

################################################################################
# Service CPU
################################################################################

resource "aws_cloudwatch_metric_alarm" "cpu_high" {
  alarm_name          = "${var.name}-cpu-high"
  alarm_description   = "Service CPU above ${var.cpu_high_threshold}% for 5 minutes: autoscaling is at max_capacity or not keeping up."
  namespace           = "AWS/ECS"
  metric_name         = "CPUUtilization"
  dimensions          = { ClusterName = var.cluster_name, ServiceName = var.service_name }
  statistic           = "Average"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 5
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.cpu_high_threshold
  treat_missing_data  = "notBreaching"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions

  tags = var.tags
}

################################################################################
# Service memory
################################################################################

# Maximum, not Average: the task nearest its limit is the one the kernel OOM-kills.
resource "aws_cloudwatch_metric_alarm" "memory_high" {
  alarm_name          = "${var.name}-memory-high"
  alarm_description   = "A task's memory above ${var.memory_high_threshold}% of task_memory for 5 minutes: a task near its limit is killed (OutOfMemoryError, exit code 137)."
  namespace           = "AWS/ECS"
  metric_name         = "MemoryUtilization"
  dimensions          = { ClusterName = var.cluster_name, ServiceName = var.service_name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 5
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.memory_high_threshold
  treat_missing_data  = "notBreaching"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions

  tags = var.tags
}

################################################################################
# Unhealthy targets
################################################################################

resource "aws_cloudwatch_metric_alarm" "unhealthy_hosts" {
  alarm_name          = "${var.name}-unhealthy-hosts"
  alarm_description   = "At least one task failed the /health check in 2 of the last 3 minutes."
  namespace           = "AWS/ApplicationELB"
  metric_name         = "UnHealthyHostCount"
  dimensions          = { LoadBalancer = var.alb_arn_suffix, TargetGroup = var.target_group_arn_suffix }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 3
  datapoints_to_alarm = 2
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions

  tags = var.tags
}

################################################################################
# Monthly budget
################################################################################

resource "aws_budgets_budget" "monthly" {
  count = var.enable_budget ? 1 : 0

  name         = "${var.name}-monthly"
  budget_type  = "COST"
  limit_amount = tostring(var.monthly_budget_usd)
  limit_unit   = "USD"
  time_unit    = "MONTHLY"

  # Without a filter the budget covers the whole account. With one, only costs carrying the
  # tags (activate them as cost allocation tags in Billing first).
  dynamic "cost_filter" {
    for_each = length(var.budget_cost_filter_tags) > 0 ? [1] : []

    content {
      name   = "TagKeyValue"
      values = [for k, v in var.budget_cost_filter_tags : format("user:%s$%s", k, v)]
    }
  }

  dynamic "notification" {
    for_each = var.budget_actual_thresholds

    content {
      notification_type         = "ACTUAL"
      comparison_operator       = "GREATER_THAN"
      threshold                 = notification.value
      threshold_type            = "PERCENTAGE"
      subscriber_sns_topic_arns = [aws_sns_topic.alarms.arn]
    }
  }

  dynamic "notification" {
    for_each = var.budget_forecasted_thresholds

    content {
      notification_type         = "FORECASTED"
      comparison_operator       = "GREATER_THAN"
      threshold                 = notification.value
      threshold_type            = "PERCENTAGE"
      subscriber_sns_topic_arns = [aws_sns_topic.alarms.arn]
    }
  }

  tags = var.tags

  # Budgets checks that it may publish to the topic.
  depends_on = [aws_sns_topic_policy.alarms]
}
