variable "region" {
  description = "AWS region of the bucket."
  type        = string
  default     = "us-east-1"
}

variable "bucket_name" {
  description = "Name of the snapshot bucket to create."
  type        = string
}

variable "prefix" {
  description = "Key prefix of the tqsnap repository inside the bucket."
  type        = string
  default     = "tqsnap"
}

variable "create_roles" {
  description = "Create the writer, reader and cleanup roles (the policies are created either way)."
  type        = bool
  default     = true
}

variable "trusted_principal_arns" {
  description = "AWS principals allowed to assume the tqsnap roles."
  type        = list(string)
  default     = []
}

variable "trusted_services" {
  description = "AWS service principals allowed to assume the tqsnap roles."
  type        = list(string)
  default     = ["ec2.amazonaws.com"]
}

variable "versioning_enabled" {
  description = "Enable bucket versioning."
  type        = bool
  default     = true
}

variable "kms_key_arn" {
  description = "KMS key for SSE-KMS; null for SSE-S3."
  type        = string
  default     = null
}

variable "force_destroy" {
  description = "Let terraform destroy delete a non-empty bucket."
  type        = bool
  default     = false
}

variable "enforce_tls" {
  description = "Deny requests that do not use TLS."
  type        = bool
  default     = true
}

variable "endpoint_url" {
  description = "Custom endpoint for S3, IAM and STS (an S3-compatible test server such as moto). Null means the real AWS endpoints."
  type        = string
  default     = null
}

variable "max_retries" {
  description = "Maximum retries of a failed AWS API call. Lower it against a local test endpoint so that unsupported calls fail fast."
  type        = number
  default     = null
}

variable "tags" {
  description = "Tags for all resources."
  type        = map(string)
  default     = {}
}
