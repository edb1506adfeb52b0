data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

# The account's existing GitHub provider, when this root does not create it.
data "aws_iam_openid_connect_provider" "github" {
  count = var.create_oidc_provider ? 0 : 1

  url = "https://${local.oidc_host}"
}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = var.aws_region

  ##############################################################################
  # GitHub: who may assume the two roles
  ##############################################################################

  oidc_host   = "token.actions.githubusercontent.com"
  oidc_arn    = var.create_oidc_provider ? aws_iam_openid_connect_provider.github[0].arn : data.aws_iam_openid_connect_provider.github[0].arn
  github_repo = "${var.github_owner}/${var.github_repository}"

  # The subjects of GitHub's OIDC tokens (GitHub's default claim template). The gate and
  # plan jobs of .github/workflows/deploy.yml run on main and name no environment; the
  # apply job runs in the production environment, which is what its subject says (and
  # all it says: the environment's deployment branch rule is what keeps it on main).
  plan_subject   = "repo:${local.github_repo}:ref:refs/heads/main"
  deploy_subject = "repo:${local.github_repo}:environment:production"

  plan_role_name   = "claude-proxy-github-plan"
  deploy_role_name = "claude-proxy-github-deploy"

  ##############################################################################
  # Terraform state: backend.hcl.example of environments/production
  ##############################################################################

  state_key        = "claude-proxy/production/terraform.tfstate"
  state_bucket_arn = "arn:${local.partition}:s3:::${var.state_bucket_name}"
  state_object_arn = "${local.state_bucket_arn}/${local.state_key}"
  # use_lockfile = true: S3-native locking, a <key>.tflock object next to the state (no
  # DynamoDB table).
  lock_object_arn = "${local.state_object_arn}.tflock"

  ##############################################################################
  # What environments/production creates, by name (its main.tf locals and the modules'
  # "${var.name}-..." names): the deploy role may change these and nothing else of their
  # kind. tests/deploy/test_bootstrap.py checks that they are still the root's names.
  ##############################################################################

  ecr_repository = "claude-proxy"
  cluster        = "claude-proxy-cluster"
  service        = "claude-proxy-service"
  task_family    = "claude-proxy"
  alb            = "claude-proxy-alb"
  target_group   = "claude-proxy-tg"
  app_roles      = ["claude-proxy-execution", "claude-proxy-task"]
  flow_logs_role = "claude-proxy-flow-logs"
  log_groups     = ["/ecs/claude-proxy-service", "/vpc/claude-proxy-flow-logs"]
  alarm_prefix   = "claude-proxy-"
  alarm_topic    = "claude-proxy-alarms"
  budget         = "claude-proxy-monthly"
  kms_alias      = "alias/claude-proxy"
  # Every resource of the production root carries it (its provider's default_tags).
  project_tag = "claude-proxy"

  ecr_repository_arn = "arn:${local.partition}:ecr:${local.region}:${local.account_id}:repository/${local.ecr_repository}"
  cluster_arn        = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:cluster/${local.cluster}"
  service_arn        = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:service/${local.cluster}/${local.service}"
  task_def_arns      = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task-definition/${local.task_family}:*"
  elb_prefix         = "arn:${local.partition}:elasticloadbalancing:${local.region}:${local.account_id}"
  alb_arns = [
    "${local.elb_prefix}:loadbalancer/app/${local.alb}/*",
    "${local.elb_prefix}:listener/app/${local.alb}/*",
    "${local.elb_prefix}:listener-rule/app/${local.alb}/*",
    "${local.elb_prefix}:targetgroup/${local.target_group}/*",
  ]
  app_role_arns      = [for name in local.app_roles : "arn:${local.partition}:iam::${local.account_id}:role/${name}"]
  flow_logs_role_arn = "arn:${local.partition}:iam::${local.account_id}:role/${local.flow_logs_role}"
  log_group_arns = flatten([
    for name in local.log_groups : [
      "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${name}",
      "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${name}:*",
    ]
  ])
  alarm_arns = [
    "arn:${local.partition}:cloudwatch:${local.region}:${local.account_id}:alarm:${local.alarm_prefix}*",
    # The target tracking policies' own alarms, which Application Auto Scaling creates
    # with the caller's permissions.
    "arn:${local.partition}:cloudwatch:${local.region}:${local.account_id}:alarm:TargetTracking-service/${local.cluster}/${local.service}-*",
  ]
  topic_arns    = ["arn:${local.partition}:sns:${local.region}:${local.account_id}:${local.alarm_topic}", "arn:${local.partition}:sns:${local.region}:${local.account_id}:${local.alarm_topic}:*"]
  budget_arn    = "arn:${local.partition}:budgets::${local.account_id}:budget/${local.budget}"
  kms_key_arns  = "arn:${local.partition}:kms:${local.region}:${local.account_id}:key/*"
  kms_alias_arn = "arn:${local.partition}:kms:${local.region}:${local.account_id}:${local.kms_alias}"
  efs_arns = [
    "arn:${local.partition}:elasticfilesystem:${local.region}:${local.account_id}:file-system/*",
    "arn:${local.partition}:elasticfilesystem:${local.region}:${local.account_id}:access-point/*",
  ]

  in_region = { StringEquals = { "aws:RequestedRegion" = local.region } }

  ##############################################################################
  # Permissions: managed policies, each under IAM's 6,144-character limit.
  #   read        both roles: what `terraform plan` refreshes, the workflow's describes,
  #               the state (read) and its lock file
  #   ecr_push    the plan role: push the image, read its scan
  #   network     the deploy role: VPC, security groups, load balancer
  #   service     the deploy role: ECS, IAM of the task roles, autoscaling, ECR
  #               repository settings, the state (write)
  #   monitoring  the deploy role: log groups, alarms, the alarm topic, the budget
  #   storage     the deploy role: the KMS key (create_kms_key), the spill file system
  #               (enable_spill_efs)
  ##############################################################################

  read_statements = [
    {
      # Describe and list calls that take no resource ARN (or only "*").
      Sid    = "DescribeWithoutResourceLevelPermissions"
      Effect = "Allow"
      Action = [
        "application-autoscaling:DescribeScalableTargets",
        "application-autoscaling:DescribeScalingActivities",
        "application-autoscaling:DescribeScalingPolicies",
        "application-autoscaling:ListTagsForResource",
        "cloudwatch:DescribeAlarms",
        "ec2:DescribeAddresses",
        "ec2:DescribeAddressesAttribute",
        "ec2:DescribeAvailabilityZones",
        "ec2:DescribeFlowLogs",
        "ec2:DescribeInternetGateways",
        "ec2:DescribeNatGateways",
        "ec2:DescribeNetworkAcls",
        "ec2:DescribeNetworkInterfaceAttribute",
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribePrefixLists",
        "ec2:DescribeRouteTables",
        "ec2:DescribeSecurityGroupRules",
        "ec2:DescribeSecurityGroups",
        "ec2:DescribeSubnets",
        "ec2:DescribeTags",
        "ec2:DescribeVpcAttribute",
        "ec2:DescribeVpcEndpointServices",
        "ec2:DescribeVpcEndpoints",
        "ec2:DescribeVpcs",
        "ecs:DescribeTaskDefinition",
        "ecs:ListTaskDefinitions",
        "elasticfilesystem:DescribeFileSystems",
        "elasticloadbalancing:DescribeListenerAttributes",
        "elasticloadbalancing:DescribeListenerCertificates",
        "elasticloadbalancing:DescribeListeners",
        "elasticloadbalancing:DescribeLoadBalancerAttributes",
        "elasticloadbalancing:DescribeLoadBalancers",
        "elasticloadbalancing:DescribeRules",
        "elasticloadbalancing:DescribeTags",
        "elasticloadbalancing:DescribeTargetGroupAttributes",
        "elasticloadbalancing:DescribeTargetGroups",
        "elasticloadbalancing:DescribeCapacityReservation",
        "kms:ListAliases",
        "logs:DescribeLogGroups",
      ]
      Resource  = "*"
      Condition = local.in_region
    },
    {
      Sid    = "ReadTheDeployment"
      Effect = "Allow"
      Action = [
        "cloudwatch:ListTagsForResource",
        "ecr:DescribeRepositories",
        "ecr:GetLifecyclePolicy",
        "ecr:ListTagsForResource",
        "ecs:DescribeClusters",
        "ecs:DescribeServices",
        "ecs:ListTagsForResource",
        "elasticfilesystem:DescribeAccessPoints",
        "elasticfilesystem:DescribeBackupPolicy",
        "elasticfilesystem:DescribeFileSystemPolicy",
        "elasticfilesystem:DescribeLifecycleConfiguration",
        "elasticfilesystem:DescribeMountTargetSecurityGroups",
        "elasticfilesystem:DescribeMountTargets",
        "elasticfilesystem:ListTagsForResource",
        "iam:GetRole",
        "iam:GetRolePolicy",
        "iam:ListAttachedRolePolicies",
        "iam:ListRolePolicies",
        "kms:DescribeKey",
        "kms:GetKeyPolicy",
        "kms:GetKeyRotationStatus",
        "kms:ListResourceTags",
        "logs:ListTagsForResource",
        "logs:ListTagsLogGroup",
        "sns:GetSubscriptionAttributes",
        "sns:GetTopicAttributes",
        "sns:ListSubscriptionsByTopic",
        "sns:ListTagsForResource",
        "wafv2:GetWebACLForResource",
      ]
      Resource = concat(
        [local.ecr_repository_arn, local.cluster_arn, local.service_arn, local.task_def_arns, local.flow_logs_role_arn, local.kms_key_arns],
        local.alb_arns, local.app_role_arns, local.log_group_arns, local.alarm_arns, local.topic_arns, local.efs_arns,
      )
    },
    {
      # AWS Budgets is a global service (its endpoint is in us-east-1): no region condition.
      Sid      = "ReadTheBudget"
      Effect   = "Allow"
      Action   = ["budgets:ViewBudget", "budgets:ListTagsForResource"]
      Resource = [local.budget_arn]
    },
    {
      Sid      = "StateBucket"
      Effect   = "Allow"
      Action   = ["s3:ListBucket"]
      Resource = [local.state_bucket_arn]
    },
    {
      Sid      = "ReadTheState"
      Effect   = "Allow"
      Action   = ["s3:GetObject"]
      Resource = [local.state_object_arn]
    },
    {
      # A plan takes the state lock too.
      Sid      = "StateLock"
      Effect   = "Allow"
      Action   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
      Resource = [local.lock_object_arn]
    },
  ]

  ecr_push_statements = [
    {
      # GetAuthorizationToken has no resource-level permissions.
      Sid       = "EcrLogin"
      Effect    = "Allow"
      Action    = ["ecr:GetAuthorizationToken"]
      Resource  = "*"
      Condition = local.in_region
    },
    {
      Sid    = "PushTheImageAndReadItsScan"
      Effect = "Allow"
      Action = [
        "ecr:BatchCheckLayerAvailability",
        "ecr:BatchGetImage",
        "ecr:CompleteLayerUpload",
        "ecr:DescribeImageScanFindings",
        "ecr:DescribeImages",
        "ecr:GetDownloadUrlForLayer",
        "ecr:InitiateLayerUpload",
        "ecr:PutImage",
        "ecr:UploadLayerPart",
      ]
      Resource = [local.ecr_repository_arn]
    },
  ]

  network_statements = [
    {
      # VPC, subnets, gateways, routes, security groups, endpoints and flow logs get their
      # IDs only when they are created, and EC2's tag conditions differ from one action
      # to the next (an association or a route acts on resources the request does not
      # tag), so these are on "*" within the region. The role is the approved production
      # job's only.
      Sid    = "Network"
      Effect = "Allow"
      Action = [
        "ec2:AllocateAddress",
        "ec2:AssociateRouteTable",
        "ec2:AttachInternetGateway",
        "ec2:AuthorizeSecurityGroupEgress",
        "ec2:AuthorizeSecurityGroupIngress",
        "ec2:CreateFlowLogs",
        "ec2:CreateInternetGateway",
        "ec2:CreateNatGateway",
        "ec2:CreateNetworkInterface",
        "ec2:CreateRoute",
        "ec2:CreateRouteTable",
        "ec2:CreateSecurityGroup",
        "ec2:CreateSubnet",
        "ec2:CreateTags",
        "ec2:CreateVpc",
        "ec2:CreateVpcEndpoint",
        "ec2:DeleteFlowLogs",
        "ec2:DeleteInternetGateway",
        "ec2:DeleteNatGateway",
        "ec2:DeleteNetworkInterface",
        "ec2:DeleteRoute",
        "ec2:DeleteRouteTable",
        "ec2:DeleteSecurityGroup",
        "ec2:DeleteSubnet",
        "ec2:DeleteTags",
        "ec2:DeleteVpc",
        "ec2:DeleteVpcEndpoints",
        "ec2:DetachInternetGateway",
        "ec2:DisassociateAddress",
        "ec2:DisassociateRouteTable",
        "ec2:ModifyNetworkInterfaceAttribute",
        "ec2:ModifySecurityGroupRules",
        "ec2:ModifySubnetAttribute",
        "ec2:ModifyVpcAttribute",
        "ec2:ModifyVpcEndpoint",
        "ec2:ReleaseAddress",
        "ec2:ReplaceRoute",
        "ec2:ReplaceRouteTableAssociation",
        "ec2:RevokeSecurityGroupEgress",
        "ec2:RevokeSecurityGroupIngress",
        "ec2:UpdateSecurityGroupRuleDescriptionsEgress",
        "ec2:UpdateSecurityGroupRuleDescriptionsIngress",
      ]
      Resource  = "*"
      Condition = local.in_region
    },
    {
      Sid    = "LoadBalancer"
      Effect = "Allow"
      Action = [
        "elasticloadbalancing:AddListenerCertificates",
        "elasticloadbalancing:AddTags",
        "elasticloadbalancing:CreateListener",
        "elasticloadbalancing:CreateLoadBalancer",
        "elasticloadbalancing:CreateRule",
        "elasticloadbalancing:CreateTargetGroup",
        "elasticloadbalancing:DeleteListener",
        "elasticloadbalancing:DeleteLoadBalancer",
        "elasticloadbalancing:DeleteRule",
        "elasticloadbalancing:DeleteTargetGroup",
        "elasticloadbalancing:ModifyListener",
        "elasticloadbalancing:ModifyListenerAttributes",
        "elasticloadbalancing:ModifyLoadBalancerAttributes",
        "elasticloadbalancing:ModifyRule",
        "elasticloadbalancing:ModifyTargetGroup",
        "elasticloadbalancing:ModifyTargetGroupAttributes",
        "elasticloadbalancing:RemoveListenerCertificates",
        "elasticloadbalancing:RemoveTags",
        "elasticloadbalancing:SetRulePriorities",
        "elasticloadbalancing:SetSecurityGroups",
        "elasticloadbalancing:SetSubnets",
        "elasticloadbalancing:SetWebACL",
      ]
      Resource = local.alb_arns
    },
    {
      # Only with waf_web_acl_arn: the operator's web ACL, associated with the ALB.
      Sid      = "WebAclAssociation"
      Effect   = "Allow"
      Action   = ["wafv2:AssociateWebACL", "wafv2:DisassociateWebACL"]
      Resource = concat(local.alb_arns, ["arn:${local.partition}:wafv2:${local.region}:${local.account_id}:regional/webacl/*/*"])
    },
  ]

  service_statements = [
    {
      # ECS takes no resource ARN for these: a new revision has no ARN yet, and a cluster
      # is created before it has one.
      Sid       = "EcsWithoutResourceLevelPermissions"
      Effect    = "Allow"
      Action    = ["ecs:CreateCluster", "ecs:DeregisterTaskDefinition", "ecs:RegisterTaskDefinition"]
      Resource  = "*"
      Condition = local.in_region
    },
    {
      Sid    = "EcsClusterAndService"
      Effect = "Allow"
      Action = [
        "ecs:CreateService",
        "ecs:DeleteCluster",
        "ecs:DeleteService",
        "ecs:PutClusterCapacityProviders",
        "ecs:TagResource",
        "ecs:UntagResource",
        "ecs:UpdateCluster",
        "ecs:UpdateClusterSettings",
        "ecs:UpdateService",
      ]
      Resource = [local.cluster_arn, local.service_arn, local.task_def_arns]
    },
    {
      # The task roles and the flow logs role, by name: never the GitHub roles themselves.
      Sid    = "TaskRoles"
      Effect = "Allow"
      Action = [
        "iam:CreateRole",
        "iam:DeleteRole",
        "iam:DeleteRolePolicy",
        "iam:ListInstanceProfilesForRole",
        "iam:PutRolePolicy",
        "iam:TagRole",
        "iam:UntagRole",
        "iam:UpdateAssumeRolePolicy",
        "iam:UpdateRole",
        "iam:UpdateRoleDescription",
      ]
      Resource = concat(local.app_role_arns, [local.flow_logs_role_arn])
    },
    {
      Sid       = "PassTheTaskRolesToEcs"
      Effect    = "Allow"
      Action    = ["iam:PassRole"]
      Resource  = local.app_role_arns
      Condition = { StringEquals = { "iam:PassedToService" = "ecs-tasks.amazonaws.com" } }
    },
    {
      Sid       = "PassTheFlowLogsRole"
      Effect    = "Allow"
      Action    = ["iam:PassRole"]
      Resource  = [local.flow_logs_role_arn]
      Condition = { StringEquals = { "iam:PassedToService" = "vpc-flow-logs.amazonaws.com" } }
    },
    {
      # The service-linked roles a first deployment in a new account needs, and only those.
      Sid      = "ServiceLinkedRoles"
      Effect   = "Allow"
      Action   = ["iam:CreateServiceLinkedRole"]
      Resource = ["arn:${local.partition}:iam::${local.account_id}:role/aws-service-role/*"]
      Condition = {
        StringEquals = {
          "iam:AWSServiceName" = [
            "ecs.amazonaws.com",
            "ecs.application-autoscaling.amazonaws.com",
            "elasticfilesystem.amazonaws.com",
            "elasticloadbalancing.amazonaws.com",
          ]
        }
      }
    },
    {
      # Scalable targets and their policies have generated IDs.
      Sid    = "Autoscaling"
      Effect = "Allow"
      Action = [
        "application-autoscaling:DeleteScalingPolicy",
        "application-autoscaling:DeregisterScalableTarget",
        "application-autoscaling:PutScalingPolicy",
        "application-autoscaling:RegisterScalableTarget",
        "application-autoscaling:TagResource",
        "application-autoscaling:UntagResource",
      ]
      Resource  = "*"
      Condition = local.in_region
    },
    {
      Sid    = "EcrRepositorySettings"
      Effect = "Allow"
      Action = [
        "ecr:CreateRepository",
        "ecr:DeleteLifecyclePolicy",
        "ecr:DeleteRepository",
        "ecr:PutImageScanningConfiguration",
        "ecr:PutImageTagMutability",
        "ecr:PutLifecyclePolicy",
        "ecr:TagResource",
        "ecr:UntagResource",
      ]
      Resource = [local.ecr_repository_arn]
    },
    {
      Sid      = "WriteTheState"
      Effect   = "Allow"
      Action   = ["s3:PutObject"]
      Resource = [local.state_object_arn]
    },
  ]

  monitoring_statements = [
    {
      Sid    = "LogGroups"
      Effect = "Allow"
      Action = [
        "logs:AssociateKmsKey",
        "logs:CreateLogGroup",
        "logs:DeleteLogGroup",
        "logs:DeleteRetentionPolicy",
        "logs:DisassociateKmsKey",
        "logs:PutRetentionPolicy",
        "logs:TagLogGroup",
        "logs:TagResource",
        "logs:UntagLogGroup",
        "logs:UntagResource",
      ]
      Resource = local.log_group_arns
    },
    {
      Sid      = "Alarms"
      Effect   = "Allow"
      Action   = ["cloudwatch:DeleteAlarms", "cloudwatch:PutMetricAlarm", "cloudwatch:TagResource", "cloudwatch:UntagResource"]
      Resource = local.alarm_arns
    },
    {
      Sid    = "AlarmTopic"
      Effect = "Allow"
      Action = [
        "sns:CreateTopic",
        "sns:DeleteTopic",
        "sns:SetSubscriptionAttributes",
        "sns:SetTopicAttributes",
        "sns:Subscribe",
        "sns:TagResource",
        "sns:Unsubscribe",
        "sns:UntagResource",
      ]
      Resource = local.topic_arns
    },
    {
      Sid      = "Budget"
      Effect   = "Allow"
      Action   = ["budgets:ModifyBudget", "budgets:TagResource", "budgets:UntagResource"]
      Resource = [local.budget_arn]
    },
  ]

  storage_statements = [
    {
      # create_kms_key: a key is created without an ARN to name; only with the project's tag.
      Sid       = "CreateTheKey"
      Effect    = "Allow"
      Action    = ["kms:CreateKey"]
      Resource  = "*"
      Condition = { StringEquals = { "aws:RequestTag/Project" = local.project_tag, "aws:RequestedRegion" = local.region } }
    },
    {
      Sid    = "ManageTheKey"
      Effect = "Allow"
      Action = [
        "kms:CancelKeyDeletion",
        "kms:CreateAlias",
        "kms:DeleteAlias",
        "kms:DisableKeyRotation",
        "kms:EnableKeyRotation",
        "kms:PutKeyPolicy",
        "kms:ScheduleKeyDeletion",
        "kms:TagResource",
        "kms:UntagResource",
        "kms:UpdateAlias",
        "kms:UpdateKeyDescription",
      ]
      Resource  = [local.kms_key_arns]
      Condition = { StringEquals = { "aws:ResourceTag/Project" = local.project_tag } }
    },
    {
      Sid      = "TheKeyAlias"
      Effect   = "Allow"
      Action   = ["kms:CreateAlias", "kms:DeleteAlias", "kms:UpdateAlias"]
      Resource = [local.kms_alias_arn]
    },
    {
      # ECR and EFS take grants on the key they encrypt with, in the caller's name.
      Sid       = "GrantsThroughEcrAndEfs"
      Effect    = "Allow"
      Action    = ["kms:CreateGrant", "kms:DescribeKey", "kms:RetireGrant"]
      Resource  = [local.kms_key_arns]
      Condition = { StringEquals = { "kms:ViaService" = ["ecr.${local.region}.amazonaws.com", "elasticfilesystem.${local.region}.amazonaws.com"] } }
    },
    {
      # enable_spill_efs: the spill file system, its access point and mount targets.
      Sid    = "SpillFileSystem"
      Effect = "Allow"
      Action = [
        "elasticfilesystem:CreateAccessPoint",
        "elasticfilesystem:CreateFileSystem",
        "elasticfilesystem:CreateMountTarget",
        "elasticfilesystem:DeleteAccessPoint",
        "elasticfilesystem:DeleteFileSystem",
        "elasticfilesystem:DeleteFileSystemPolicy",
        "elasticfilesystem:DeleteMountTarget",
        "elasticfilesystem:ModifyMountTargetSecurityGroups",
        "elasticfilesystem:PutBackupPolicy",
        "elasticfilesystem:PutFileSystemPolicy",
        "elasticfilesystem:PutLifecycleConfiguration",
        "elasticfilesystem:TagResource",
        "elasticfilesystem:UntagResource",
        "elasticfilesystem:UpdateFileSystem",
      ]
      Resource = local.efs_arns
    },
  ]

  # Neither role may ever change itself, the other one, or their policies.
  deny_self_change = {
    Sid    = "NeverChangeTheDeployRoles"
    Effect = "Deny"
    Action = [
      "iam:AttachRolePolicy",
      "iam:CreatePolicyVersion",
      "iam:DeletePolicy",
      "iam:DeletePolicyVersion",
      "iam:DeleteRole",
      "iam:DeleteRolePermissionsBoundary",
      "iam:DeleteRolePolicy",
      "iam:DetachRolePolicy",
      "iam:PutRolePermissionsBoundary",
      "iam:PutRolePolicy",
      "iam:SetDefaultPolicyVersion",
      "iam:TagRole",
      "iam:UntagRole",
      "iam:UpdateAssumeRolePolicy",
      "iam:UpdateRole",
    ]
    Resource = [
      "arn:${local.partition}:iam::${local.account_id}:role/${local.plan_role_name}",
      "arn:${local.partition}:iam::${local.account_id}:role/${local.deploy_role_name}",
      "arn:${local.partition}:iam::${local.account_id}:policy/claude-proxy-github-*",
    ]
  }

  policies = {
    read       = { description = "Read what the production root manages, the state and its lock", statements = concat(local.read_statements, [local.deny_self_change]) }
    ecr_push   = { description = "Push the claude-proxy image and read its scan", statements = local.ecr_push_statements }
    network    = { description = "Apply the production root: VPC, security groups, load balancer", statements = local.network_statements }
    service    = { description = "Apply the production root: ECS, task roles, autoscaling, ECR repository settings, the state", statements = local.service_statements }
    monitoring = { description = "Apply the production root: log groups, alarms, the alarm topic, the budget", statements = local.monitoring_statements }
    storage    = { description = "Apply the production root: the KMS key and the spill file system", statements = local.storage_statements }
  }
  plan_policies   = ["read", "ecr_push"]
  deploy_policies = ["read", "network", "service", "monitoring", "storage"]

  trust = {
    plan   = local.plan_subject
    deploy = local.deploy_subject
  }
}

################################################################################
# Terraform state bucket
################################################################################

resource "aws_s3_bucket" "state" {
  # checkov:skip=CKV_AWS_18: server access logs need a second bucket; CloudTrail data events are the audit trail a state bucket wants
  # checkov:skip=CKV_AWS_144: versioning is the recovery path; a replica in a second region is a choice for the operator, not a default
  # checkov:skip=CKV_AWS_145: the S3 backend writes the state with encrypt = true (SSE-S3), as backend.hcl.example sets it
  # checkov:skip=CKV2_AWS_62: nothing consumes events of the state bucket
  bucket = var.state_bucket_name

  # Every deployment's state is in here: terraform destroy must not take it away.
  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_s3_bucket_versioning" "state" {
  bucket = aws_s3_bucket.state.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "state" {
  bucket = aws_s3_bucket.state.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_public_access_block" "state" {
  bucket = aws_s3_bucket.state.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "state" {
  bucket = aws_s3_bucket.state.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "state" {
  bucket = aws_s3_bucket.state.id

  rule {
    id     = "expire-old-state-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.state]
}

resource "aws_s3_bucket_policy" "state" {
  bucket = aws_s3_bucket.state.id

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "DenyWithoutTls"
        Effect    = "Deny"
        Principal = { AWS = "*" }
        Action    = "s3:*"
        Resource  = [local.state_bucket_arn, "${local.state_bucket_arn}/*"]
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
    ]
  })

  depends_on = [aws_s3_bucket_public_access_block.state]
}

################################################################################
# GitHub's OIDC provider
################################################################################

# AWS trusts GitHub's certificate authority for this host: no thumbprint needed.
resource "aws_iam_openid_connect_provider" "github" {
  count = var.create_oidc_provider ? 1 : 0

  url            = "https://${local.oidc_host}"
  client_id_list = ["sts.amazonaws.com"]
}

################################################################################
# The two roles of .github/workflows/deploy.yml
################################################################################

# plan:   the gate and plan jobs (main, no environment): read, build, push, plan.
# deploy: the apply job (the production environment, after its reviewers approved).
resource "aws_iam_role" "github" {
  for_each = local.trust

  name                 = each.key == "plan" ? local.plan_role_name : local.deploy_role_name
  description          = each.key == "plan" ? "GitHub Actions, ${local.github_repo} on main: terraform plan and the image push" : "GitHub Actions, ${local.github_repo} in the production environment: terraform apply and rollback"
  max_session_duration = 3600

  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "GitHubActions"
        Effect    = "Allow"
        Principal = { Federated = local.oidc_arn }
        Action    = "sts:AssumeRoleWithWebIdentity"
        Condition = {
          StringEquals = {
            "${local.oidc_host}:aud" = "sts.amazonaws.com"
            "${local.oidc_host}:sub" = each.value
          }
        }
      },
    ]
  })
}

resource "aws_iam_policy" "github" {
  for_each = local.policies

  name        = "claude-proxy-github-${replace(each.key, "_", "-")}"
  description = each.value.description
  policy      = jsonencode({ Version = "2012-10-17", Statement = each.value.statements })
}

resource "aws_iam_role_policy_attachment" "plan" {
  for_each = toset(local.plan_policies)

  role       = aws_iam_role.github["plan"].name
  policy_arn = aws_iam_policy.github[each.key].arn
}

resource "aws_iam_role_policy_attachment" "deploy" {
  for_each = toset(local.deploy_policies)

  role       = aws_iam_role.github["deploy"].name
  policy_arn = aws_iam_policy.github[each.key].arn
}
