output "repository_name" {
  description = "Name of the repository."
  value       = aws_ecr_repository.this.name
}

output "repository_arn" {
  description = "ARN of the repository (the execution role may pull from it)."
  value       = aws_ecr_repository.this.arn
}

output "repository_url" {
  description = "URL of the repository: <account>.dkr.ecr.<region>.amazonaws.com/<name>. Push <url>:<tag> and set container_image to it."
  value       = aws_ecr_repository.this.repository_url
}

output "registry_id" {
  description = "Account ID of the registry."
  value       = aws_ecr_repository.this.registry_id
}

output "repository" {
  description = "The repository (all attributes of the aws_ecr_repository resource)."
  value       = aws_ecr_repository.this
}

output "lifecycle_policy" {
  description = "The repository's lifecycle policy (JSON)."
  value       = aws_ecr_lifecycle_policy.this.policy
}
