terraform {
  required_version = ">= 1.7"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "5.100.0"
    }
  }

  # State lives in S3 (with S3-native locking on Terraform >= 1.10). Partial configuration:
  #   terraform init -backend-config=backend.hcl      (copy backend.hcl.example)
  backend "s3" {}
}
