terraform {
  required_version = ">= 1.7"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "5.100.0"
    }
  }

  # No backend block: the first apply creates the bucket the state would live in, so this
  # root starts with local state (terraform.tfstate, which git ignores). README.md says how
  # to move it into the bucket afterwards.
}
