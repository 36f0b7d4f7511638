data "aws_partition" "current" {}

locals {
  name_prefix = coalesce(var.name_prefix, var.bucket_name)

  # "" for a repository at the bucket root, otherwise "<prefix>/".
  key_prefix = var.prefix == "" ? "" : "${var.prefix}/"

  # Built from the name rather than taken from aws_s3_bucket.this.arn so that every policy
  # document is known at plan time.
  bucket_arn  = "arn:${data.aws_partition.current.partition}:s3:::${var.bucket_name}"
  objects_arn = "${local.bucket_arn}/${local.key_prefix}*"

  # Keys whose creation is a tqsnap commit point: written once with put-if-absent, never overwritten.
  commit_object_arns = [
    "${local.bucket_arn}/${local.key_prefix}tqsnap.json",
    "${local.bucket_arn}/${local.key_prefix}snapshots/*",
    "${local.bucket_arn}/${local.key_prefix}tags/*",
    "${local.bucket_arn}/${local.key_prefix}config/*",
  ]

  # Where `tqsnap init` and `tqsnap doctor` probe the store's promises (put-if-absent, ranged
  # GET, multipart); gc removes what a probe leaves once it is older than the grace period.
  probe_arn = "${local.bucket_arn}/${local.key_prefix}tqsnap-probe/*"

  # Everything a writer (tqsnap snapshot / save, init's probe) creates.
  writer_put_arns = concat(
    ["${local.bucket_arn}/${local.key_prefix}shards/*", local.probe_arn],
    local.commit_object_arns,
  )

  # What gc deletes: unreferenced shards, finalised manifests and their tombstones, and the
  # objects a store probe left.
  cleanup_delete_arns = [
    "${local.bucket_arn}/${local.key_prefix}shards/*",
    "${local.bucket_arn}/${local.key_prefix}snapshots/*",
    "${local.bucket_arn}/${local.key_prefix}tombstones/*",
    local.probe_arn,
  ]

  list_prefix_patterns = var.prefix == "" ? [] : ["${var.prefix}/*"]

  roles = toset(["writer", "reader", "cleanup"])

  role_principal_arns = {
    for r in local.roles : r => lookup(var.role_trusted_principal_arns, r, var.trusted_principal_arns)
  }
  role_services = {
    for r in local.roles : r => lookup(var.role_trusted_services, r, var.trusted_services)
  }
}

# ---------------------------------------------------------------------------------------------
# Bucket
# ---------------------------------------------------------------------------------------------

resource "aws_s3_bucket" "this" {
  bucket        = var.bucket_name
  force_destroy = var.force_destroy
  tags          = var.tags
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket = aws_s3_bucket.this.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = var.kms_key_arn != null
  }
}

resource "aws_s3_bucket_versioning" "this" {
  count = var.versioning_enabled ? 1 : 0

  bucket = aws_s3_bucket.this.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"

    filter {
      prefix = local.key_prefix
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_upload_days
    }
  }

  dynamic "rule" {
    for_each = var.versioning_enabled ? [1] : []

    content {
      id     = "expire-noncurrent-versions"
      status = "Enabled"

      filter {
        prefix = local.key_prefix
      }

      noncurrent_version_expiration {
        noncurrent_days = var.noncurrent_version_expiration_days
      }

      expiration {
        expired_object_delete_marker = true
      }
    }
  }

  # Lifecycle rules on noncurrent versions must be applied after versioning is configured.
  depends_on = [aws_s3_bucket_versioning.this]
}

data "aws_iam_policy_document" "bucket" {
  dynamic "statement" {
    for_each = var.enforce_tls ? [1] : []

    content {
      sid       = "DenyInsecureTransport"
      effect    = "Deny"
      actions   = ["s3:*"]
      resources = [local.bucket_arn, "${local.bucket_arn}/*"]

      principals {
        type        = "*"
        identifiers = ["*"]
      }

      condition {
        test     = "Bool"
        variable = "aws:SecureTransport"
        values   = ["false"]
      }
    }
  }

  dynamic "statement" {
    for_each = var.enforce_conditional_commits ? [1] : []

    content {
      # A commit (repository config, manifest, tag) must be created with If-None-Match: *,
      # so a second writer gets 412 instead of overwriting it. PutObject and
      # CompleteMultipartUpload without the header are denied. CreateMultipartUpload and
      # UploadPart cannot carry the header; S3 marks them with s3:ObjectCreationOperation =
      # false, which exempts them (their CompleteMultipartUpload is still checked).
      sid       = "DenyUnconditionalCommitWrites"
      effect    = "Deny"
      actions   = ["s3:PutObject"]
      resources = local.commit_object_arns

      principals {
        type        = "*"
        identifiers = ["*"]
      }

      condition {
        test     = "Null"
        variable = "s3:if-none-match"
        values   = ["true"]
      }

      condition {
        test     = "BoolIfExists"
        variable = "s3:ObjectCreationOperation"
        values   = ["true"]
      }
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  count = var.enforce_tls || var.enforce_conditional_commits ? 1 : 0

  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.bucket.json

  # Applying a bucket policy while the public access block is still being set can fail.
  depends_on = [aws_s3_bucket_public_access_block.this]
}

# ---------------------------------------------------------------------------------------------
# IAM policies: one per tqsnap role, scoped to the repository prefix
# ---------------------------------------------------------------------------------------------

data "aws_iam_policy_document" "writer" {
  statement {
    sid       = "ListRepository"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]

    dynamic "condition" {
      for_each = length(local.list_prefix_patterns) > 0 ? [1] : []

      content {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = local.list_prefix_patterns
      }
    }
  }

  statement {
    sid       = "ReadRepository"
    actions   = ["s3:GetObject"]
    resources = [local.objects_arn]
  }

  statement {
    sid = "WriteShardsAndCommits"
    actions = [
      "s3:PutObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = local.writer_put_arns
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]

    content {
      sid       = "UseBucketKey"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = [statement.value]
    }
  }
}

data "aws_iam_policy_document" "reader" {
  statement {
    sid       = "ListRepository"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]

    dynamic "condition" {
      for_each = length(local.list_prefix_patterns) > 0 ? [1] : []

      content {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = local.list_prefix_patterns
      }
    }
  }

  statement {
    sid       = "ReadRepository"
    actions   = ["s3:GetObject"]
    resources = [local.objects_arn]
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]

    content {
      sid       = "UseBucketKey"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
    }
  }
}

data "aws_iam_policy_document" "cleanup" {
  statement {
    sid       = "ListRepository"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]

    dynamic "condition" {
      for_each = length(local.list_prefix_patterns) > 0 ? [1] : []

      content {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = local.list_prefix_patterns
      }
    }
  }

  statement {
    sid       = "ReadRepository"
    actions   = ["s3:GetObject"]
    resources = [local.objects_arn]
  }

  statement {
    sid       = "WriteTombstones"
    actions   = ["s3:PutObject"]
    resources = ["${local.bucket_arn}/${local.key_prefix}tombstones/*"]
  }

  statement {
    sid       = "DeleteGarbage"
    actions   = ["s3:DeleteObject"]
    resources = local.cleanup_delete_arns
  }

  # gc aborts multipart uploads that killed saves left, once older than the grace period.
  statement {
    sid       = "ListIncompleteUploads"
    actions   = ["s3:ListBucketMultipartUploads"]
    resources = [local.bucket_arn]
  }

  statement {
    sid       = "AbortIncompleteUploads"
    actions   = ["s3:AbortMultipartUpload"]
    resources = [local.objects_arn]
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]

    content {
      sid       = "UseBucketKey"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = [statement.value]
    }
  }
}

locals {
  policy_documents = {
    writer  = data.aws_iam_policy_document.writer.json
    reader  = data.aws_iam_policy_document.reader.json
    cleanup = data.aws_iam_policy_document.cleanup.json
  }
}

resource "aws_iam_policy" "this" {
  for_each = local.roles

  name        = "${local.name_prefix}-tqsnap-${each.key}"
  path        = var.iam_path
  description = "tqsnap ${each.key} access to s3://${var.bucket_name}/${var.prefix}"
  policy      = local.policy_documents[each.key]
  tags        = var.tags
}

# ---------------------------------------------------------------------------------------------
# IAM roles
# ---------------------------------------------------------------------------------------------

data "aws_iam_policy_document" "assume" {
  for_each = var.create_roles ? local.roles : toset([])

  statement {
    sid     = "AssumeTqsnap${title(each.key)}"
    actions = ["sts:AssumeRole"]

    dynamic "principals" {
      for_each = length(local.role_principal_arns[each.key]) > 0 ? [1] : []

      content {
        type        = "AWS"
        identifiers = local.role_principal_arns[each.key]
      }
    }

    dynamic "principals" {
      for_each = length(local.role_services[each.key]) > 0 ? [1] : []

      content {
        type        = "Service"
        identifiers = local.role_services[each.key]
      }
    }
  }
}

resource "aws_iam_role" "this" {
  for_each = var.create_roles ? local.roles : toset([])

  name                 = "${local.name_prefix}-tqsnap-${each.key}"
  path                 = var.iam_path
  description          = "tqsnap ${each.key} for s3://${var.bucket_name}/${var.prefix}"
  assume_role_policy   = data.aws_iam_policy_document.assume[each.key].json
  max_session_duration = var.max_session_duration
  permissions_boundary = var.permissions_boundary_arn
  tags                 = var.tags

  lifecycle {
    precondition {
      condition     = length(local.role_principal_arns[each.key]) + length(local.role_services[each.key]) > 0
      error_message = "The ${each.key} role needs at least one trusted principal: set trusted_principal_arns / trusted_services, or role_trusted_principal_arns / role_trusted_services for \"${each.key}\", or create_roles = false."
    }
  }
}

resource "aws_iam_role_policy_attachment" "this" {
  for_each = var.create_roles ? local.roles : toset([])

  role       = aws_iam_role.this[each.key].name
  policy_arn = aws_iam_policy.this[each.key].arn
}
