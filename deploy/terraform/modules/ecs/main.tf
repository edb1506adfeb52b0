data "aws_region" "current" {}

locals {
  log_group_name = "/ecs/${var.service_name}"

  spill_dir   = "/var/lib/claude-proxy/spill"
  metrics_dir = "/tmp/claude-proxy-metrics"

  # Valid Fargate task sizes: CPU units => memory (MiB) from, to, in steps of.
  fargate_memory = {
    "256"   = { min = 512, max = 2048, step = 512 } # 512, 1024, 2048 (not 1536)
    "512"   = { min = 1024, max = 4096, step = 1024 }
    "1024"  = { min = 2048, max = 8192, step = 1024 }
    "2048"  = { min = 4096, max = 16384, step = 1024 }
    "4096"  = { min = 8192, max = 30720, step = 1024 }
    "8192"  = { min = 16384, max = 61440, step = 4096 }
    "16384" = { min = 32768, max = 122880, step = 8192 }
  }
  memory_range = lookup(local.fargate_memory, tostring(var.task_cpu), { min = 0, max = -1, step = 1 })
  valid_task_size = (
    var.task_cpu == 256
    ? contains([512, 1024, 2048], var.task_memory)
    : var.task_memory >= local.memory_range.min && var.task_memory <= local.memory_range.max && var.task_memory % local.memory_range.step == 0
  )

  # The app's settings (docs/reliability.md): keep-alive 310 s > the ALB's idle timeout 300 s;
  # the upstream idle timeout 290 s < the ALB's 300 s, so a silent stream gets the proxy's
  # SSE "Timeout (idle)" error event before the ALB cuts the connection without a word. All
  # of them stay below the target group's deregistration delay (at least 600 s), which is
  # what a deployment gives a stream before SIGTERM. After SIGTERM: pre-stop 10 s + drain
  # 90 s + log flush 10 s = 110 s < stopTimeout 120 s (Fargate's maximum). The three are
  # set here, not left to the image, so that extra_environment cannot stretch the sum.
  # app_environment (the caller's sign-in settings) comes after extra_environment.
  environment = merge(
    var.extra_environment,
    var.app_environment,
    {
      CLAUDE_PROXY_HOST                      = "0.0.0.0"
      CLAUDE_PROXY_PORT                      = tostring(var.container_port)
      CLAUDE_PROXY_EMF_ENABLED               = "true"
      CLAUDE_PROXY_SERVICE_NAME              = var.service_name
      CLAUDE_PROXY_FORWARDED_ALLOW_IPS       = var.forwarded_allow_ips
      CLAUDE_PROXY_KEEPALIVE_SECONDS         = "310"
      CLAUDE_PROXY_PRE_STOP_SECONDS          = "10"
      CLAUDE_PROXY_DRAIN_SECONDS             = "90"
      CLAUDE_PROXY_LOG_FLUSH_TIMEOUT_SECONDS = "10"
      CLAUDE_PROXY_IDLE_TIMEOUT_SECONDS      = "290"
      CLAUDE_PROXY_SPILL_DIR                 = local.spill_dir
      CLAUDE_PROXY_METRICS_DIR               = local.metrics_dir
    },
    var.enable_adot ? {
      CLAUDE_PROXY_TRACING        = "true"
      OTEL_EXPORTER_OTLP_ENDPOINT = "http://localhost:4318"
    } : {},
  )

  app_log_configuration = {
    logDriver = "awslogs"
    options = {
      awslogs-group         = aws_cloudwatch_log_group.this.name
      awslogs-region        = data.aws_region.current.name
      awslogs-stream-prefix = var.container_name
      # A slow CloudWatch Logs must never block the app's stdout (and so its requests):
      # lines beyond the buffer are dropped instead. The request log is in the database.
      mode            = "non-blocking"
      max-buffer-size = "25m"
    }
  }

  app_container = merge(
    {
      name      = var.container_name
      image     = var.container_image
      essential = true

      portMappings = [
        {
          name          = "http"
          containerPort = var.container_port
          hostPort      = var.container_port
          protocol      = "tcp"
          appProtocol   = "http"
        },
      ]

      environment = [for k in sort(keys(local.environment)) : { name = k, value = local.environment[k] }]
      secrets     = [for k in sort(keys(var.secrets)) : { name = k, valueFrom = var.secrets[k] }]

      # SIGTERM, then up to 120 s before SIGKILL: the drain takes at most 110 s.
      stopTimeout = 120

      # An init process (tini) as PID 1 forwards SIGTERM and reaps zombies.
      linuxParameters = { initProcessEnabled = true }

      # Read-only root; the two writable paths are task volumes. ECS Exec needs a writable
      # root filesystem for its agent, so enabling it lifts this.
      readonlyRootFilesystem = !var.enable_execute_command
      mountPoints = [
        { sourceVolume = "spill", containerPath = local.spill_dir, readOnly = false },
        { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
      ]

      logConfiguration = local.app_log_configuration
    },
    # A crashed process is restarted in place (if it ran for restartAttemptPeriod), keeping
    # the task's volumes: the spill directory survives and is replayed at start.
    var.container_restart_policy_enabled ? {
      restartPolicy = {
        enabled              = true
        ignoredExitCodes     = [0]
        restartAttemptPeriod = 300
      }
    } : {},
    # The ALB's health check is the source of truth for routing and replacement; this one
    # only adds the container's health to the ECS console and events.
    var.enable_container_health_check ? {
      healthCheck = {
        command     = ["CMD", "python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${var.container_port}/health', timeout=4)"]
        interval    = 30
        timeout     = 5
        retries     = 3
        startPeriod = 30
      }
    } : {},
    var.enable_adot ? {
      dependsOn = [{ containerName = "aws-otel-collector", condition = "START" }]
    } : {},
  )

  # OTLP in on localhost:4318 (same network namespace in awsvpc), X-Ray out. Not essential:
  # tracing must never take the proxy down. Started first, stopped after the app (dependsOn),
  # so the last spans of a drain are still exported.
  adot_container = {
    name                   = "aws-otel-collector"
    image                  = var.adot_image
    essential              = false
    command                = ["--config=/etc/ecs/ecs-xray.yaml"]
    memoryReservation      = 64
    readonlyRootFilesystem = true
    logConfiguration = merge(local.app_log_configuration, {
      options = merge(local.app_log_configuration.options, { awslogs-stream-prefix = "aws-otel-collector" })
    })
  }

  container_definitions = concat([local.app_container], var.enable_adot ? [local.adot_container] : [])
}

################################################################################
# Cluster
################################################################################

resource "aws_ecs_cluster" "this" {
  name = var.cluster_name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  tags = var.tags
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = ["FARGATE", "FARGATE_SPOT"]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

################################################################################
# Logs
################################################################################

resource "aws_cloudwatch_log_group" "this" {
  # checkov:skip=CKV_AWS_338: kept log_retention_days (30 by default): the request log in the database is the lasting record; raise it where a year is required
  name              = local.log_group_name
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn

  tags = var.tags
}

################################################################################
# Task definition
################################################################################

resource "aws_ecs_task_definition" "this" {
  family                   = var.task_family
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.task_cpu)
  memory                   = tostring(var.task_memory)
  execution_role_arn       = var.execution_role_arn
  task_role_arn            = var.task_role_arn

  container_definitions = jsonencode(local.container_definitions)

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  # Bind mounts on the task's ephemeral storage: writable under a read-only root, and
  # they outlive a restarted container (not the task). With spill_efs the spill directory
  # is an EFS access point instead, which outlives the task: TLS in transit, and the task
  # role's IAM identity (its policy admits it; the file system's refuses anything else).
  volume {
    name = "spill"

    dynamic "efs_volume_configuration" {
      for_each = var.spill_efs == null ? [] : [var.spill_efs]

      content {
        file_system_id     = efs_volume_configuration.value.file_system_id
        transit_encryption = "ENABLED"

        authorization_config {
          access_point_id = efs_volume_configuration.value.access_point_id
          iam             = "ENABLED"
        }
      }
    }
  }

  volume {
    name = "tmp"
  }

  # A new revision does not deregister the previous one: every revision stays ACTIVE, so
  # the service can be pointed back at an earlier one (runbook section 7), and ECS's own
  # rollbacks never land on an INACTIVE revision. `terraform destroy` leaves them too.
  skip_destroy = true

  tags = var.tags

  lifecycle {
    precondition {
      condition     = local.valid_task_size
      error_message = "task_memory ${var.task_memory} is not a valid Fargate memory size for task_cpu ${var.task_cpu} (e.g. 1024 CPU: 2048-8192 MiB in 1024 steps)."
    }
  }
}

################################################################################
# Service
################################################################################

resource "aws_ecs_service" "this" {
  name             = var.service_name
  cluster          = aws_ecs_cluster.this.arn
  task_definition  = aws_ecs_task_definition.this.arn
  desired_count    = var.desired_count
  platform_version = "LATEST"

  # Rolling deploy: the new tasks are started and healthy before old ones stop.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  health_check_grace_period_seconds  = var.health_check_grace_period_seconds

  # New tasks that keep failing to start or to become healthy: roll back.
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  # New tasks that are healthy but fail requests (the target 5xx-rate alarm): roll back.
  dynamic "alarms" {
    for_each = length(var.deployment_alarm_names) > 0 ? [var.deployment_alarm_names] : []

    content {
      alarm_names = alarms.value
      enable      = true
      rollback    = true
    }
  }

  deployment_controller {
    type = "ECS"
  }

  # The first fargate_base tasks always run on on-demand Fargate; the rest are split by weight.
  capacity_provider_strategy {
    capacity_provider = "FARGATE"
    base              = var.fargate_base
    weight            = var.fargate_weight
  }

  dynamic "capacity_provider_strategy" {
    for_each = var.fargate_spot_weight > 0 ? [var.fargate_spot_weight] : []

    content {
      capacity_provider = "FARGATE_SPOT"
      base              = 0
      weight            = capacity_provider_strategy.value
    }
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = var.security_group_ids
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = var.target_group_arn
    container_name   = var.container_name
    container_port   = var.container_port
  }

  # Any change to the service starts a new deployment. Provider 5.x needs it to change the
  # capacity_provider_strategy in place (fargate_spot_weight 0 -> 1 adds FARGATE_SPOT):
  # without it that change replaces the service, deleting it and every task at once.
  force_new_deployment = true

  availability_zone_rebalancing = "ENABLED"
  enable_execute_command        = var.enable_execute_command
  enable_ecs_managed_tags       = true
  propagate_tags                = "SERVICE"
  wait_for_steady_state         = var.wait_for_steady_state

  tags = var.tags

  # A deployment (and the deletion) waits for the old tasks' targets to drain, up to the
  # deregistration delay, before ECS stops them: 20 minutes on top of it.
  timeouts {
    update = "${20 + ceil(var.deregistration_delay / 60)}m"
    delete = "${20 + ceil(var.deregistration_delay / 60)}m"
  }

  lifecycle {
    # Application Auto Scaling owns the task count once the service exists.
    ignore_changes = [desired_count]

    precondition {
      condition     = var.fargate_weight > 0 || var.fargate_spot_weight > 0
      error_message = "At least one of fargate_weight and fargate_spot_weight must be above 0."
    }
  }

  depends_on = [aws_ecs_cluster_capacity_providers.this]
}
