variable "bucket_name" {
  description = "Name of the S3 bucket that holds the tqsnap repository."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name (3-63 lowercase letters, digits, dots and hyphens)."
  }
}

variable "prefix" {
  description = "Key prefix of the tqsnap repository inside the bucket, without leading or trailing slash. An empty string puts the repository at the bucket root. All policies are scoped to this prefix."
  type        = string
  default     = "tqsnap"

  validation {
    condition     = var.prefix == "" || can(regex("^[^/*?](.*[^/*?])?$", var.prefix))
    error_message = "prefix must not start or end with '/' and must not start or end with '*' or '?'."
  }
}

variable "force_destroy" {
  description = "Allow terraform destroy to delete the bucket even when it still holds objects (all snapshots are lost)."
  type        = bool
  default     = false
}

variable "versioning_enabled" {
  description = "Enable bucket versioning. Overwrites are already prevented by policy; versioning additionally keeps deleted shards and manifests recoverable for noncurrent_version_expiration_days."
  type        = bool
  default     = false
}

variable "noncurrent_version_expiration_days" {
  description = "With versioning on, noncurrent object versions (left behind by gc deletes) expire after this many days."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1
    error_message = "noncurrent_version_expiration_days must be at least 1."
  }
}

variable "abort_incomplete_multipart_upload_days" {
  description = "Abort incomplete multipart uploads (shards of interrupted saves) this many days after they were started."
  type        = number
  default     = 2

  validation {
    condition     = var.abort_incomplete_multipart_upload_days >= 1
    error_message = "abort_incomplete_multipart_upload_days must be at least 1."
  }
}

variable "kms_key_arn" {
  description = "ARN of a KMS key for default encryption (SSE-KMS with an S3 bucket key). Null means SSE-S3 (AES256). When set, the roles are also granted the KMS actions they need on this key."
  type        = string
  default     = null
}

variable "enforce_tls" {
  description = "Add a bucket policy statement that denies every request not made over TLS (aws:SecureTransport = false)."
  type        = bool
  default     = true
}

variable "enforce_conditional_commits" {
  description = "Add a bucket policy statement that denies s3:PutObject on the repository config, manifests (snapshots/*) and tags unless the request carries If-None-Match (condition key s3:if-none-match), so no client can overwrite a commit."
  type        = bool
  default     = true
}

variable "create_roles" {
  description = "Create the writer, reader and cleanup IAM roles. The IAM policies are created either way, so they can be attached to existing users or roles."
  type        = bool
  default     = true
}

variable "name_prefix" {
  description = "Prefix for the IAM role and policy names. Defaults to the bucket name."
  type        = string
  default     = null
}

variable "iam_path" {
  description = "IAM path for the roles and policies."
  type        = string
  default     = "/"
}

variable "permissions_boundary_arn" {
  description = "Optional permissions boundary attached to every role."
  type        = string
  default     = null
}

variable "max_session_duration" {
  description = "Maximum session duration of the roles, in seconds. A long snapshot or gc run must finish within one session (or refresh its credentials)."
  type        = number
  default     = 3600
}

variable "trusted_principal_arns" {
  description = "AWS principals (account, role or user ARNs) allowed to assume every role, unless role_trusted_principal_arns overrides it for a role."
  type        = list(string)
  default     = []
}

variable "trusted_services" {
  description = "AWS service principals (for example ec2.amazonaws.com, ecs-tasks.amazonaws.com) allowed to assume every role, unless role_trusted_services overrides it for a role."
  type        = list(string)
  default     = []
}

variable "role_trusted_principal_arns" {
  description = "Per-role override of trusted_principal_arns, keyed by writer, reader or cleanup."
  type        = map(list(string))
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.role_trusted_principal_arns) : contains(["writer", "reader", "cleanup"], k)])
    error_message = "role_trusted_principal_arns keys must be writer, reader or cleanup."
  }
}

variable "role_trusted_services" {
  description = "Per-role override of trusted_services, keyed by writer, reader or cleanup."
  type        = map(list(string))
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.role_trusted_services) : contains(["writer", "reader", "cleanup"], k)])
    error_message = "role_trusted_services keys must be writer, reader or cleanup."
  }
}

variable "tags" {
  description = "Tags for every resource that supports them."
  type        = map(string)
  default     = {}
}
