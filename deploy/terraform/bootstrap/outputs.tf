################################################################################
# For the production root's backend
################################################################################

output "state_bucket" {
  description = "The state bucket: bucket in environments/production/backend.hcl, and the repository variable TF_STATE_BUCKET."
  value       = aws_s3_bucket.state.bucket
}

output "state_bucket_arn" {
  description = "ARN of the state bucket."
  value       = local.state_bucket_arn
}

output "backend_config" {
  description = "The settings of environments/production/backend.hcl (backend.hcl.example with this bucket and region)."
  value = {
    bucket       = aws_s3_bucket.state.bucket
    key          = local.state_key
    region       = var.aws_region
    encrypt      = true
    use_lockfile = true
  }
}

################################################################################
# For the deploy workflow
################################################################################

output "oidc_provider_arn" {
  description = "ARN of the account's GitHub OIDC provider (created here, or the one that was there)."
  value       = local.oidc_arn
}

output "plan_role_arn" {
  description = "Role of the gate and plan jobs (main, no environment): the repository variable AWS_PLAN_ROLE_ARN."
  value       = aws_iam_role.github["plan"].arn
}

output "deploy_role_arn" {
  description = "Role of the apply job (the production environment): the repository variable AWS_DEPLOY_ROLE_ARN."
  value       = aws_iam_role.github["deploy"].arn
}

output "github_variables" {
  description = "The repository variables of .github/workflows/deploy.yml this root determines (TERRAFORM_TFVARS is the production terraform.tfvars)."
  value = {
    AWS_REGION          = var.aws_region
    AWS_PLAN_ROLE_ARN   = aws_iam_role.github["plan"].arn
    AWS_DEPLOY_ROLE_ARN = aws_iam_role.github["deploy"].arn
    TF_STATE_BUCKET     = aws_s3_bucket.state.bucket
  }
}

output "trusted_subjects" {
  description = "The OIDC subjects each role trusts: the main branch (plan) and the production environment (deploy)."
  value       = local.trust
}
