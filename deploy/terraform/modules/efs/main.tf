################################################################################
# File system (encrypted at rest; TLS in transit enforced by its policy)
################################################################################

resource "aws_efs_file_system" "this" {
  creation_token   = "${var.name}-spill"
  encrypted        = true
  kms_key_id       = var.kms_key_arn # null: the AWS-managed aws/elasticfilesystem key
  performance_mode = "generalPurpose"
  throughput_mode  = "elastic" # billed per use: the spill directory is written only during database outages

  tags = merge(var.tags, { Name = "${var.name}-spill" })
}

# Only clients that mount over TLS get in, and only through the access point: a file
# system policy also turns away anonymous (non-IAM) NFS clients, so the task role's
# identity policy (elasticfilesystem:ClientMount, ClientWrite) is what admits the tasks.
resource "aws_efs_file_system_policy" "this" {
  file_system_id = aws_efs_file_system.this.id

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "DenyWithoutTls"
        Effect    = "Deny"
        Principal = { AWS = "*" }
        Action    = "*"
        Resource  = aws_efs_file_system.this.arn
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
      {
        Sid       = "DenyOutsideTheAccessPoint"
        Effect    = "Deny"
        Principal = { AWS = "*" }
        Action    = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite", "elasticfilesystem:ClientRootAccess"]
        Resource  = aws_efs_file_system.this.arn
        Condition = { StringNotEquals = { "elasticfilesystem:AccessPointArn" = aws_efs_access_point.spill.arn } }
      },
    ]
  })
}

################################################################################
# Access point: the spill directory, as the app's user
################################################################################

# Every operation through it runs as the image's user (10001:10001) under /spill, created
# on first use with that owner: the app sees a directory it owns at CLAUDE_PROXY_SPILL_DIR.
resource "aws_efs_access_point" "spill" {
  file_system_id = aws_efs_file_system.this.id

  posix_user {
    uid = var.posix_uid
    gid = var.posix_gid
  }

  root_directory {
    path = var.root_directory

    creation_info {
      owner_uid   = var.posix_uid
      owner_gid   = var.posix_gid
      permissions = "0750"
    }
  }

  tags = merge(var.tags, { Name = "${var.name}-spill" })
}

################################################################################
# Mount targets and their security group: NFS from the tasks only
################################################################################

resource "aws_security_group" "efs" {
  name        = "${var.name}-efs-sg"
  description = "${var.name} spill file system: NFS from the tasks only"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-efs-sg" })
}

resource "aws_vpc_security_group_ingress_rule" "nfs_from_tasks" {
  security_group_id            = aws_security_group.efs.id
  description                  = "NFS from the tasks only"
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
  referenced_security_group_id = var.task_security_group_id

  tags = merge(var.tags, { Name = "${var.name}-efs-in-task" })
}

# The tasks' security group allows only what it lists out: add NFS to the mount targets.
resource "aws_vpc_security_group_egress_rule" "task_to_nfs" {
  security_group_id            = var.task_security_group_id
  description                  = "NFS to the spill file system's mount targets"
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
  referenced_security_group_id = aws_security_group.efs.id

  tags = merge(var.tags, { Name = "${var.name}-task-out-nfs" })
}

# One per subnet (one per AZ): a task mounts the one in its own zone.
resource "aws_efs_mount_target" "this" {
  count = length(var.subnet_ids)

  file_system_id  = aws_efs_file_system.this.id
  subnet_id       = var.subnet_ids[count.index]
  security_groups = [aws_security_group.efs.id]
}
