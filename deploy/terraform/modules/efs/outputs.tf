output "file_system_id" {
  description = "ID of the file system."
  value       = aws_efs_file_system.this.id
}

output "file_system_arn" {
  description = "ARN of the file system (the task role's EFS permissions name it)."
  value       = aws_efs_file_system.this.arn
}

output "access_point_id" {
  description = "ID of the spill access point. Known only once the mount targets and the file system policy exist, so that no task mounts before them."
  value       = aws_efs_access_point.spill.id

  depends_on = [aws_efs_mount_target.this, aws_efs_file_system_policy.this, aws_vpc_security_group_ingress_rule.nfs_from_tasks, aws_vpc_security_group_egress_rule.task_to_nfs]
}

output "access_point_arn" {
  description = "ARN of the spill access point."
  value       = aws_efs_access_point.spill.arn
}

output "security_group_id" {
  description = "ID of the mount targets' security group (<name>-efs-sg)."
  value       = aws_security_group.efs.id
}

output "file_system" {
  description = "The file system (all attributes of the aws_efs_file_system resource)."
  value       = aws_efs_file_system.this
}

output "access_point" {
  description = "The access point (all attributes of the aws_efs_access_point resource)."
  value       = aws_efs_access_point.spill
}

output "file_system_policy" {
  description = "The file system policy (JSON)."
  value       = aws_efs_file_system_policy.this.policy
}

output "mount_targets" {
  description = "The mount targets (every attribute of each), one per subnet."
  value       = aws_efs_mount_target.this
}

output "ingress_rules" {
  description = "The mount targets' ingress rules (every attribute of each): NFS from the task security group only."
  value       = [aws_vpc_security_group_ingress_rule.nfs_from_tasks]
}

output "task_egress_rules" {
  description = "The rules this module adds to the task security group (every attribute of each): NFS to the mount targets."
  value       = [aws_vpc_security_group_egress_rule.task_to_nfs]
}
