# The bootstrap root planned against a mocked AWS provider (no credentials, no network):
# the state bucket's protections, who may assume the two roles, and what they may do.
#   terraform init -backend=false && terraform test

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  aws_region        = "eu-west-1"
  github_owner      = "acme"
  github_repository = "claude-proxy"
  state_bucket_name = "acme-claude-proxy-tfstate"
}

run "state_bucket" {
  command = plan

  assert {
    condition     = aws_s3_bucket.state.bucket == "acme-claude-proxy-tfstate"
    error_message = "The bucket is state_bucket_name."
  }

  assert {
    condition     = aws_s3_bucket_versioning.state.versioning_configuration[0].status == "Enabled"
    error_message = "The state bucket is versioned: every state the deploys wrote can be restored."
  }

  assert {
    condition     = one(one(aws_s3_bucket_server_side_encryption_configuration.state.rule).apply_server_side_encryption_by_default).sse_algorithm == "AES256"
    error_message = "The state bucket encrypts by default (SSE-S3, what the backend's encrypt = true writes)."
  }

  assert {
    condition = alltrue([
      aws_s3_bucket_public_access_block.state.block_public_acls,
      aws_s3_bucket_public_access_block.state.block_public_policy,
      aws_s3_bucket_public_access_block.state.ignore_public_acls,
      aws_s3_bucket_public_access_block.state.restrict_public_buckets,
    ])
    error_message = "Public access to the state bucket is blocked, all four ways."
  }

  assert {
    condition     = one(aws_s3_bucket_ownership_controls.state.rule).object_ownership == "BucketOwnerEnforced"
    error_message = "ACLs are off: the bucket owns every object."
  }

  assert {
    condition     = one(one(aws_s3_bucket_lifecycle_configuration.state.rule).noncurrent_version_expiration).noncurrent_days == 90
    error_message = "Old state versions are kept 90 days by default."
  }

  assert {
    condition = anytrue([
      for s in jsondecode(aws_s3_bucket_policy.state.policy).Statement :
      s.Effect == "Deny" && s.Condition.Bool["aws:SecureTransport"] == "false"
    ])
    error_message = "The bucket policy refuses requests without TLS."
  }

  assert {
    condition     = output.backend_config == { bucket = "acme-claude-proxy-tfstate", key = "claude-proxy/production/terraform.tfstate", region = "eu-west-1", encrypt = true, use_lockfile = true }
    error_message = "backend_config is backend.hcl.example with this bucket and region."
  }
}

run "github_trust" {
  command = plan

  assert {
    condition     = aws_iam_openid_connect_provider.github[0].url == "https://token.actions.githubusercontent.com"
    error_message = "The OIDC provider is GitHub Actions'."
  }

  assert {
    condition     = aws_iam_openid_connect_provider.github[0].client_id_list == toset(["sts.amazonaws.com"])
    error_message = "The provider's only audience is sts.amazonaws.com."
  }

  assert {
    condition = jsondecode(aws_iam_role.github["plan"].assume_role_policy).Statement == [{
      Sid       = "GitHubActions"
      Effect    = "Allow"
      Principal = { Federated = "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com" }
      Action    = "sts:AssumeRoleWithWebIdentity"
      Condition = {
        StringEquals = {
          "token.actions.githubusercontent.com:aud" = "sts.amazonaws.com"
          "token.actions.githubusercontent.com:sub" = "repo:acme/claude-proxy:ref:refs/heads/main"
        }
      }
    }]
    error_message = "The plan role trusts this repository's main branch only, with an exact subject (no wildcard)."
  }

  assert {
    condition = jsondecode(aws_iam_role.github["deploy"].assume_role_policy).Statement == [{
      Sid       = "GitHubActions"
      Effect    = "Allow"
      Principal = { Federated = "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com" }
      Action    = "sts:AssumeRoleWithWebIdentity"
      Condition = {
        StringEquals = {
          "token.actions.githubusercontent.com:aud" = "sts.amazonaws.com"
          "token.actions.githubusercontent.com:sub" = "repo:acme/claude-proxy:environment:production"
        }
      }
    }]
    error_message = "The deploy role trusts this repository's production environment only."
  }

  assert {
    condition     = aws_iam_role.github["plan"].name == "claude-proxy-github-plan" && aws_iam_role.github["deploy"].name == "claude-proxy-github-deploy"
    error_message = "The roles are claude-proxy-github-plan and claude-proxy-github-deploy."
  }

  assert {
    condition     = output.trusted_subjects == { plan = "repo:acme/claude-proxy:ref:refs/heads/main", deploy = "repo:acme/claude-proxy:environment:production" }
    error_message = "trusted_subjects lists the two subjects."
  }
}

run "permissions" {
  command = plan

  assert {
    condition     = keys(aws_iam_role_policy_attachment.plan) == ["ecr_push", "read"]
    error_message = "The plan role reads, pushes the image and plans: nothing that changes the deployment."
  }

  assert {
    condition     = keys(aws_iam_role_policy_attachment.deploy) == ["monitoring", "network", "read", "service", "storage"]
    error_message = "The deploy role reads and applies; it pushes no image."
  }

  assert {
    condition     = alltrue([for p in aws_iam_policy.github : length(p.policy) < 6144])
    error_message = "Each managed policy fits IAM's 6,144-character limit."
  }

  assert {
    condition = alltrue(flatten([
      for p in aws_iam_policy.github : [
        for s in jsondecode(p.policy).Statement : [
          for a in flatten([s.Action]) : !strcontains(a, "*")
        ]
      ]
    ]))
    error_message = "Every action is named: no wildcard in an action."
  }

  assert {
    condition = alltrue(flatten([
      for p in aws_iam_policy.github : [
        for s in jsondecode(p.policy).Statement :
        s.Effect == "Deny" || s.Resource != "*" || try(s.Condition.StringEquals["aws:RequestedRegion"], "") == "eu-west-1"
      ]
    ]))
    error_message = "An action allowed on any resource is allowed in the deployment's region only."
  }

  assert {
    condition = toset(flatten([
      for s in jsondecode(aws_iam_policy.github["service"].policy).Statement : s.Resource if contains(flatten([s.Action]), "iam:PassRole")
      ])) == toset([
      "arn:aws:iam::123456789012:role/claude-proxy-execution",
      "arn:aws:iam::123456789012:role/claude-proxy-task",
      "arn:aws:iam::123456789012:role/claude-proxy-flow-logs",
    ])
    error_message = "iam:PassRole is for the task roles (and the flow logs role) only."
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_policy.github["service"].policy).Statement :
      contains(["ecs-tasks.amazonaws.com", "vpc-flow-logs.amazonaws.com"], s.Condition.StringEquals["iam:PassedToService"]) if contains(flatten([s.Action]), "iam:PassRole")
    ])
    error_message = "The task roles are passed to ECS tasks only, the flow logs role to VPC flow logs only."
  }

  assert {
    condition = alltrue(flatten([
      for p in aws_iam_policy.github : [
        for s in jsondecode(p.policy).Statement : [
          for r in flatten([s.Resource]) : !strcontains(r, "claude-proxy-github")
        ] if s.Effect == "Allow"
      ]
    ]))
    error_message = "Nothing is allowed on the GitHub roles or their policies (no way to widen one's own rights)."
  }

  assert {
    condition = anytrue([
      for s in jsondecode(aws_iam_policy.github["read"].policy).Statement :
      s.Effect == "Deny" && contains(flatten([s.Action]), "iam:PutRolePolicy") && contains(flatten([s.Resource]), "arn:aws:iam::123456789012:role/claude-proxy-github-deploy")
    ])
    error_message = "Both roles are explicitly denied changing the GitHub roles."
  }

  assert {
    condition = [
      for s in jsondecode(aws_iam_policy.github["service"].policy).Statement : s.Resource if s.Sid == "EcsClusterAndService"
      ] == [[
        "arn:aws:ecs:eu-west-1:123456789012:cluster/claude-proxy-cluster",
        "arn:aws:ecs:eu-west-1:123456789012:service/claude-proxy-cluster/claude-proxy-service",
        "arn:aws:ecs:eu-west-1:123456789012:task-definition/claude-proxy:*",
    ]]
    error_message = "ECS: the one cluster, the one service, the claude-proxy task definitions."
  }

  assert {
    condition = [
      for s in jsondecode(aws_iam_policy.github["ecr_push"].policy).Statement : s.Resource if s.Sid == "PushTheImageAndReadItsScan"
    ] == [["arn:aws:ecr:eu-west-1:123456789012:repository/claude-proxy"]]
    error_message = "The image is pushed to the one repository."
  }

  assert {
    condition = toset(flatten([
      for p in ["read", "service"] : [
        for s in jsondecode(aws_iam_policy.github[p].policy).Statement : s.Resource if anytrue([for a in flatten([s.Action]) : startswith(a, "s3:")])
      ]
      ])) == toset([
      "arn:aws:s3:::acme-claude-proxy-tfstate",
      "arn:aws:s3:::acme-claude-proxy-tfstate/claude-proxy/production/terraform.tfstate",
      "arn:aws:s3:::acme-claude-proxy-tfstate/claude-proxy/production/terraform.tfstate.tflock",
    ])
    error_message = "S3: the state bucket, the production state and its lock file, nothing else (not the bootstrap's own state)."
  }

  assert {
    condition = !anytrue([
      for s in jsondecode(aws_iam_policy.github["read"].policy).Statement :
      contains(flatten([s.Action]), "s3:PutObject") && contains(flatten([s.Resource]), "arn:aws:s3:::acme-claude-proxy-tfstate/claude-proxy/production/terraform.tfstate")
    ])
    error_message = "The plan role cannot write the state (only its lock file)."
  }

  assert {
    condition     = keys(output.github_variables) == ["AWS_DEPLOY_ROLE_ARN", "AWS_PLAN_ROLE_ARN", "AWS_REGION", "TF_STATE_BUCKET"] && output.github_variables.AWS_REGION == "eu-west-1" && output.github_variables.TF_STATE_BUCKET == "acme-claude-proxy-tfstate"
    error_message = "github_variables are the repository variables the workflow reads."
  }
}

run "existing_oidc_provider" {
  command = plan

  variables {
    create_oidc_provider = false
  }

  assert {
    condition     = length(aws_iam_openid_connect_provider.github) == 0
    error_message = "With create_oidc_provider = false no second provider is created."
  }

  assert {
    condition     = jsondecode(aws_iam_role.github["deploy"].assume_role_policy).Statement[0].Principal.Federated == "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com"
    error_message = "The roles trust the account's existing provider."
  }
}

run "owner_is_a_github_name" {
  command = plan

  variables {
    github_owner = "acme corp"
  }

  expect_failures = [var.github_owner]
}

run "repository_without_owner" {
  command = plan

  variables {
    github_repository = "acme/claude-proxy"
  }

  expect_failures = [var.github_repository]
}

run "bucket_name_is_valid" {
  command = plan

  variables {
    state_bucket_name = "Acme_Terraform_State"
  }

  expect_failures = [var.state_bucket_name]
}
