output "key_arn" {
  description = "ARN of the key."
  value       = aws_kms_key.this.arn
}

output "key_id" {
  description = "ID of the key."
  value       = aws_kms_key.this.key_id
}

output "alias_name" {
  description = "Name of the key's alias (alias/<name>)."
  value       = aws_kms_alias.this.name
}

output "key" {
  description = "The key (all attributes of the aws_kms_key resource)."
  value       = aws_kms_key.this
}

output "key_policy" {
  description = "The key policy (JSON)."
  value       = aws_kms_key.this.policy
}
