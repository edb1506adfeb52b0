# Shared by every test file: mock_provider "aws" { source = "./tests/mocks" }.

mock_data "aws_availability_zones" {
  defaults = {
    names    = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    zone_ids = ["euw1-az1", "euw1-az2", "euw1-az3"]
  }
}

mock_data "aws_region" {
  defaults = {
    name = "eu-west-1"
  }
}

mock_data "aws_caller_identity" {
  defaults = {
    account_id = "123456789012"
  }
}

mock_data "aws_partition" {
  defaults = {
    partition  = "aws"
    dns_suffix = "amazonaws.com"
  }
}

# Computed attributes are unknown in a plan; these give the ones the assertions compare
# known, realistic values already at plan time.
override_resource {
  target          = module.security.aws_security_group.alb
  override_during = plan
  values = {
    id = "sg-0a1b2c3d4e5f00a1b"
  }
}

override_resource {
  target          = module.security.aws_security_group.task
  override_during = plan
  values = {
    id = "sg-0f9e8d7c6b5a4f9e8"
  }
}

override_resource {
  target          = module.alb.aws_lb.this
  override_during = plan
  values = {
    arn        = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/claude-proxy-alb/50dc6c495c0c9188"
    arn_suffix = "app/claude-proxy-alb/50dc6c495c0c9188"
    dns_name   = "claude-proxy-alb-1234567890.eu-west-1.elb.amazonaws.com"
    zone_id    = "Z32O12XQLNTSW2"
  }
}

override_resource {
  target          = module.alb.aws_lb_target_group.this
  override_during = plan
  values = {
    arn        = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/claude-proxy-tg/73e2d6bc24d8a067"
    arn_suffix = "targetgroup/claude-proxy-tg/73e2d6bc24d8a067"
  }
}

override_resource {
  target          = module.alarms.aws_sns_topic.alarms
  override_during = plan
  values = {
    arn = "arn:aws:sns:eu-west-1:123456789012:claude-proxy-alarms"
  }
}

override_resource {
  target          = module.ecr.aws_ecr_repository.this
  override_during = plan
  values = {
    arn            = "arn:aws:ecr:eu-west-1:123456789012:repository/claude-proxy"
    repository_url = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/claude-proxy"
  }
}

override_resource {
  target          = module.ecs.aws_cloudwatch_log_group.this
  override_during = plan
  values = {
    arn = "arn:aws:logs:eu-west-1:123456789012:log-group:/ecs/claude-proxy-service"
  }
}


override_resource {
  target          = module.kms[0].aws_kms_key.this
  override_during = plan
  values = {
    arn    = "arn:aws:kms:eu-west-1:123456789012:key/0d6f1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
    key_id = "0d6f1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
  }
}

override_resource {
  target          = module.spill_efs[0].aws_efs_file_system.this
  override_during = plan
  values = {
    id  = "fs-0123456789abcdef0"
    arn = "arn:aws:elasticfilesystem:eu-west-1:123456789012:file-system/fs-0123456789abcdef0"
  }
}

override_resource {
  target          = module.spill_efs[0].aws_efs_access_point.spill
  override_during = plan
  values = {
    id  = "fsap-0123456789abcdef0"
    arn = "arn:aws:elasticfilesystem:eu-west-1:123456789012:access-point/fsap-0123456789abcdef0"
  }
}

override_resource {
  target          = module.spill_efs[0].aws_security_group.efs
  override_during = plan
  values = {
    id = "sg-0e1f2a3b4c5d6e7f8"
  }
}
