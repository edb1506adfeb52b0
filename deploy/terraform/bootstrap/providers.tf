provider "aws" {
  region = var.aws_region

  # Refuse to run against any other account (an admin shell on the wrong profile would
  # otherwise create a second state bucket and deploy role somewhere else).
  allowed_account_ids = length(var.allowed_account_ids) > 0 ? var.allowed_account_ids : null

  default_tags {
    tags = merge(var.tags, {
      Project     = "claude-proxy"
      Environment = "production"
      ManagedBy   = "terraform"
      Component   = "bootstrap"
    })
  }
}
