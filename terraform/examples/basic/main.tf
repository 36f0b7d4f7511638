locals {
  custom_endpoint = var.endpoint_url != null
}

provider "aws" {
  region      = var.region
  max_retries = var.max_retries

  # Against a custom endpoint (a local S3/IAM emulator) there is no real account, no instance
  # metadata and no virtual-hosted bucket DNS.
  s3_use_path_style           = local.custom_endpoint
  skip_credentials_validation = local.custom_endpoint
  skip_requesting_account_id  = local.custom_endpoint
  skip_metadata_api_check     = local.custom_endpoint
  skip_region_validation      = local.custom_endpoint

  dynamic "endpoints" {
    for_each = local.custom_endpoint ? [var.endpoint_url] : []

    content {
      s3  = endpoints.value
      iam = endpoints.value
      sts = endpoints.value
    }
  }

  default_tags {
    tags = var.tags
  }
}

module "snapshot_bucket" {
  source = "../../modules/snapshot-bucket"

  bucket_name        = var.bucket_name
  prefix             = var.prefix
  versioning_enabled = var.versioning_enabled
  kms_key_arn        = var.kms_key_arn
  force_destroy      = var.force_destroy
  enforce_tls        = var.enforce_tls

  create_roles           = var.create_roles
  trusted_principal_arns = var.trusted_principal_arns
  trusted_services       = var.trusted_services

  tags = { "tqsnap:repository" = var.prefix }
}
