locals {
  resource_id = "service/${var.cluster_name}/${var.service_name}"
}

################################################################################
# Scalable target (the service's desired count)
################################################################################

resource "aws_appautoscaling_target" "this" {
  service_namespace  = "ecs"
  scalable_dimension = "ecs:service:DesiredCount"
  resource_id        = local.resource_id
  min_capacity       = var.min_capacity
  max_capacity       = var.max_capacity

  tags = var.tags

  lifecycle {
    precondition {
      condition     = var.min_capacity <= var.max_capacity
      error_message = "min_capacity must not exceed max_capacity."
    }
  }
}

################################################################################
# Target tracking: CPU
################################################################################

resource "aws_appautoscaling_policy" "cpu" {
  name               = "${var.name}-cpu-target"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension
  resource_id        = aws_appautoscaling_target.this.resource_id

  target_tracking_scaling_policy_configuration {
    target_value       = var.cpu_target_value
    scale_out_cooldown = var.scale_out_cooldown
    # Slow to scale in: every removed task drains its streams for up to 110 s.
    scale_in_cooldown = var.scale_in_cooldown

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

################################################################################
# Target tracking: active streams (the app's EMF metric)
#
# A proxy of long streams is often bound by open connections, not CPU. ActiveStreams is
# published by every worker (namespace ClaudeProxy, dimension ServiceName) once a minute;
# its Average is the streams per task (one worker per task in the container).
################################################################################

resource "aws_appautoscaling_policy" "active_streams" {
  count = var.enable_active_streams_scaling ? 1 : 0

  name               = "${var.name}-active-streams-target"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension
  resource_id        = aws_appautoscaling_target.this.resource_id

  target_tracking_scaling_policy_configuration {
    target_value       = var.active_streams_target
    scale_out_cooldown = var.scale_out_cooldown
    scale_in_cooldown  = var.scale_in_cooldown

    customized_metric_specification {
      namespace   = var.metrics_namespace
      metric_name = "ActiveStreams"
      statistic   = "Average"

      dimensions {
        name  = "ServiceName"
        value = var.service_name
      }
    }
  }
}
