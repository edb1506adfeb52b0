data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name

  log_group_arns = [for name in var.log_group_names : "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${name}"]

  statements = concat(
    [
      {
        # The account's IAM policies decide who else may use and manage the key (AWS's
        # default key policy). Terraform itself and EFS (through grants) go this way.
        Sid       = "AccountAdministration"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
    ],
    length(local.log_group_arns) == 0 ? [] : [
      {
        # CloudWatch Logs encrypts and decrypts these log groups' events, and only theirs.
        Sid       = "CloudWatchLogs"
        Effect    = "Allow"
        Principal = { Service = "logs.${local.region}.amazonaws.com" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
        Condition = {
          ArnEquals = { "kms:EncryptionContext:aws:logs:arn" = local.log_group_arns }
        }
      },
    ],
    length(var.sns_publisher_services) == 0 ? [] : [
      {
        # CloudWatch alarms and AWS Budgets publish to the encrypted alarm topic (with the
        # AWS-managed aws/sns key they could not, and their notifications would be lost).
        Sid       = "AlarmTopicPublishers"
        Effect    = "Allow"
        Principal = { Service = var.sns_publisher_services }
        Action    = ["kms:Decrypt", "kms:GenerateDataKey*"]
        Resource  = "*"
      },
    ],
  )
}

################################################################################
# Customer-managed key
################################################################################

resource "aws_kms_key" "this" {
  description             = var.description
  key_usage               = "ENCRYPT_DECRYPT"
  enable_key_rotation     = true
  deletion_window_in_days = var.deletion_window_in_days

  policy = jsonencode({ Version = "2012-10-17", Statement = local.statements })

  tags = var.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}
