# Inputs the deployment must refuse, before anything is planned.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  aws_region                   = "eu-west-1"
  certificate_arn              = "arn:aws:acm:eu-west-1:123456789012:certificate/0b5c5d1e-1234-4abc-9def-0123456789ab"
  container_image              = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/claude-proxy:v1.4.2"
  anthropic_api_key_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:claude-proxy/anthropic-api-key-AbCdEf"
  database_url_secret_arn      = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:claude-proxy/database-url-GhIjKl"
  admin_key_secret_arn         = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:claude-proxy/admin-key-MnOpQr"
}

run "certificate_must_be_acm" {
  command = plan

  variables {
    certificate_arn = "arn:aws:iam::123456789012:server-certificate/claude-proxy"
  }

  expect_failures = [var.certificate_arn]
}

run "image_needs_a_tag" {
  command = plan

  variables {
    container_image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/claude-proxy"
  }

  expect_failures = [var.container_image]
}

run "image_not_latest" {
  command = plan

  variables {
    container_image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/claude-proxy:latest"
  }

  expect_failures = [var.container_image]
}

run "secret_must_be_a_full_secretsmanager_arn" {
  command = plan

  variables {
    # An SSM parameter, and a secret ARN without its random suffix.
    anthropic_api_key_secret_arn = "arn:aws:ssm:eu-west-1:123456789012:parameter/claude-proxy/anthropic-api-key"
    database_url_secret_arn      = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:claude-proxy/database-url"
  }

  expect_failures = [var.anthropic_api_key_secret_arn, var.database_url_secret_arn]
}

run "log_retention_must_be_a_cloudwatch_value" {
  command = plan

  variables {
    log_retention_days = 31
  }

  expect_failures = [var.log_retention_days]
}

run "task_cpu_must_be_a_fargate_size" {
  command = plan

  variables {
    task_cpu = 1000
  }

  expect_failures = [var.task_cpu]
}

run "at_least_two_azs" {
  command = plan

  variables {
    az_count = 1
  }

  expect_failures = [var.az_count]
}

run "idle_timeout_below_keepalive" {
  command = plan

  variables {
    idle_timeout = 310
  }

  expect_failures = [var.idle_timeout]
}

################################################################################
# Checks inside the ecs module, run on the module itself (a test can only expect failures
# from the objects of the module it runs).
################################################################################

run "task_memory_must_suit_task_cpu" {
  command = plan

  module {
    source = "../../modules/ecs"
  }

  variables {
    task_cpu           = 1024
    task_memory        = 1024
    execution_role_arn = "arn:aws:iam::123456789012:role/claude-proxy-execution"
    task_role_arn      = "arn:aws:iam::123456789012:role/claude-proxy-task"
    secrets = {
      ANTHROPIC_API_KEY = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:claude-proxy/anthropic-api-key-AbCdEf"
    }
    forwarded_allow_ips = "10.0.0.0/16"
    subnet_ids          = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
    security_group_ids  = ["sg-0f9e8d7c6b5a4f9e8"]
    target_group_arn    = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/claude-proxy-tg/73e2d6bc24d8a067"
  }

  expect_failures = [aws_ecs_task_definition.this]
}

run "extra_environment_cannot_stretch_the_shutdown" {
  command = plan

  module {
    source = "../../modules/ecs"
  }

  variables {
    extra_environment  = { CLAUDE_PROXY_LOG_FLUSH_TIMEOUT_SECONDS = "60" }
    execution_role_arn = "arn:aws:iam::123456789012:role/claude-proxy-execution"
    task_role_arn      = "arn:aws:iam::123456789012:role/claude-proxy-task"
    secrets = {
      ANTHROPIC_API_KEY = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:claude-proxy/anthropic-api-key-AbCdEf"
    }
    forwarded_allow_ips = "10.0.0.0/16"
    subnet_ids          = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
    security_group_ids  = ["sg-0f9e8d7c6b5a4f9e8"]
    target_group_arn    = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/claude-proxy-tg/73e2d6bc24d8a067"
  }

  expect_failures = [var.extra_environment]
}

run "extra_environment_cannot_override_managed_settings" {
  command = plan

  module {
    source = "../../modules/ecs"
  }

  variables {
    extra_environment  = { CLAUDE_PROXY_DRAIN_SECONDS = "300" }
    execution_role_arn = "arn:aws:iam::123456789012:role/claude-proxy-execution"
    task_role_arn      = "arn:aws:iam::123456789012:role/claude-proxy-task"
    secrets = {
      ANTHROPIC_API_KEY = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:claude-proxy/anthropic-api-key-AbCdEf"
    }
    forwarded_allow_ips = "10.0.0.0/16"
    subnet_ids          = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
    security_group_ids  = ["sg-0f9e8d7c6b5a4f9e8"]
    target_group_arn    = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/claude-proxy-tg/73e2d6bc24d8a067"
  }

  expect_failures = [var.extra_environment]
}

run "deregistration_delay_at_least_600" {
  command = plan

  variables {
    deregistration_delay = 599
  }

  expect_failures = [var.deregistration_delay]
}

run "deregistration_delay_at_most_3600" {
  command = plan

  variables {
    deregistration_delay = 3601
  }

  expect_failures = [var.deregistration_delay]
}

################################################################################
# Checks inside the alb module
################################################################################

run "deregistration_delay_above_the_idle_timeout" {
  command = plan

  module {
    source = "../../modules/alb"
  }

  variables {
    idle_timeout         = 1200
    deregistration_delay = 900
    vpc_id               = "vpc-0123456789abcdef0"
    public_subnet_ids    = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
    security_group_id    = "sg-0a1b2c3d4e5f00a1b"
  }

  expect_failures = [aws_lb_target_group.this]
}

################################################################################
# Sign-in: all of its parts, or none
################################################################################

run "sign_in_needs_the_session_secret" {
  command = plan

  variables {
    oidc_issuer                   = "https://example.okta.com/oauth2/default"
    oidc_client_id                = "0oa1b2c3d4e5f6g7h8i9"
    oidc_client_secret_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:claude-proxy/oidc-client-secret-StUvWx"
    public_url                    = "https://claude-proxy.example.com"
  }

  expect_failures = [output.oidc_redirect_uri]
}

run "sign_in_needs_all_of_its_parts" {
  command = plan

  variables {
    oidc_issuer = "https://example.okta.com/oauth2/default"
  }

  expect_failures = [output.oidc_redirect_uri]
}

run "one_public_url" {
  command = plan

  variables {
    public_url        = "https://claude-proxy.example.com"
    extra_environment = { CLAUDE_PROXY_PUBLIC_URL = "https://proxy.example.org" }
  }

  expect_failures = [output.oidc_redirect_uri]
}

run "sign_in_values_are_validated" {
  command = plan

  variables {
    oidc_issuer                  = "http://example.okta.com/oauth2/default"
    public_url                   = "https://claude-proxy.example.com/"
    oidc_scopes                  = "profile email"
    oidc_admin_groups            = ["platform,admins"]
    session_secret_secret_arn    = "arn:aws:ssm:eu-west-1:123456789012:parameter/claude-proxy/session-secret"
    alert_webhook_url_secret_arn = "https://hooks.slack.com/services/T000/B000/XXXX"
  }

  expect_failures = [
    var.oidc_issuer, var.public_url, var.oidc_scopes, var.oidc_admin_groups,
    var.session_secret_secret_arn, var.alert_webhook_url_secret_arn,
  ]
}

run "secrets_never_in_extra_environment" {
  command = plan

  module {
    source = "../../modules/ecs"
  }

  variables {
    extra_environment  = { CLAUDE_PROXY_SESSION_SECRET = "0123456789abcdef0123456789abcdef" }
    execution_role_arn = "arn:aws:iam::123456789012:role/claude-proxy-execution"
    task_role_arn      = "arn:aws:iam::123456789012:role/claude-proxy-task"
    secrets = {
      ANTHROPIC_API_KEY = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:claude-proxy/anthropic-api-key-AbCdEf"
    }
    forwarded_allow_ips = "10.0.0.0/16"
    subnet_ids          = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
    security_group_ids  = ["sg-0f9e8d7c6b5a4f9e8"]
    target_group_arn    = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/claude-proxy-tg/73e2d6bc24d8a067"
  }

  expect_failures = [var.extra_environment]
}
