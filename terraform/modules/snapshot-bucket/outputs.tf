output "bucket_name" {
  description = "Name of the snapshot bucket."
  value       = aws_s3_bucket.this.id
}

output "bucket_arn" {
  description = "ARN of the snapshot bucket."
  value       = aws_s3_bucket.this.arn
}

output "prefix" {
  description = "Key prefix of the tqsnap repository inside the bucket."
  value       = var.prefix
}

output "repository_url" {
  description = "URL to give tqsnap: s3://<bucket>/<prefix>."
  value       = var.prefix == "" ? "s3://${aws_s3_bucket.this.id}" : "s3://${aws_s3_bucket.this.id}/${var.prefix}"
}

output "writer_role_arn" {
  description = "ARN of the writer role (tqsnap snapshot, save). Null when create_roles is false."
  value       = try(aws_iam_role.this["writer"].arn, null)
}

output "reader_role_arn" {
  description = "ARN of the reader role (tqsnap restore, load, snapshots, show, diff, verify). Null when create_roles is false."
  value       = try(aws_iam_role.this["reader"].arn, null)
}

output "cleanup_role_arn" {
  description = "ARN of the cleanup role (tqsnap forget, gc). Null when create_roles is false."
  value       = try(aws_iam_role.this["cleanup"].arn, null)
}

output "role_arns" {
  description = "Map of role name (writer, reader, cleanup) to role ARN; empty when create_roles is false."
  value       = { for k, r in aws_iam_role.this : k => r.arn }
}

output "policy_arns" {
  description = "Map of role name (writer, reader, cleanup) to the ARN of its managed IAM policy."
  value       = { for k, p in aws_iam_policy.this : k => p.arn }
}

output "policy_json" {
  description = "Map of role name (writer, reader, cleanup) to its IAM policy document (JSON)."
  value       = local.policy_documents
}

output "bucket_policy_json" {
  description = "The bucket policy document (JSON)."
  value       = data.aws_iam_policy_document.bucket.json
}
