provider "aws" {
  region = var.aws_region

  # Refuse to run against any other account (a wrong profile would otherwise build a second
  # production somewhere else).
  allowed_account_ids = length(var.allowed_account_ids) > 0 ? var.allowed_account_ids : null

  default_tags {
    tags = merge(var.tags, {
      Project     = "claude-proxy"
      Environment = "production"
      ManagedBy   = "terraform"
    })
  }
}
