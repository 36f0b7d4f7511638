output "repository_url" {
  description = "URL to give tqsnap."
  value       = module.snapshot_bucket.repository_url
}

output "bucket_name" {
  description = "Name of the snapshot bucket."
  value       = module.snapshot_bucket.bucket_name
}

output "bucket_arn" {
  description = "ARN of the snapshot bucket."
  value       = module.snapshot_bucket.bucket_arn
}

output "writer_role_arn" {
  description = "Role for tqsnap snapshot / save."
  value       = module.snapshot_bucket.writer_role_arn
}

output "reader_role_arn" {
  description = "Role for tqsnap restore / load / snapshots / show / diff / verify."
  value       = module.snapshot_bucket.reader_role_arn
}

output "cleanup_role_arn" {
  description = "Role for tqsnap forget and gc."
  value       = module.snapshot_bucket.cleanup_role_arn
}

output "role_arns" {
  description = "Writer, reader and cleanup role ARNs."
  value       = module.snapshot_bucket.role_arns
}

output "policy_arns" {
  description = "Writer, reader and cleanup policy ARNs."
  value       = module.snapshot_bucket.policy_arns
}

output "policy_json" {
  description = "Writer, reader and cleanup policy documents."
  value       = module.snapshot_bucket.policy_json
}

output "bucket_policy_json" {
  description = "The bucket policy document."
  value       = module.snapshot_bucket.bucket_policy_json
}
