output "queue_url" {
  description = "Run `icefloe bridge sqs <queue_url>`"
  value       = aws_sqs_queue.notifications.url
}

output "dead_letter_queue_url" {
  description = "Pass as --dead-letter-queue; also the queue's redrive target"
  value       = aws_sqs_queue.dead_letters.url
}

output "lithops_execution_role_arn" {
  description = "execution.lithops.aws_lambda.execution_role in the spec"
  value       = aws_iam_role.lithops.arn
}

output "lithops_storage_bucket" {
  description = "execution.lithops.aws_lambda.storage_bucket in the spec"
  value       = aws_s3_bucket.lithops.bucket
}

output "lithops_runtime_repository" {
  description = "Where `lithops runtime build` pushes the runtime image"
  value       = aws_ecr_repository.lithops_runtime.repository_url
}

output "bridge_policy_arn" {
  description = "Attach to the role or user that runs `icefloe bridge sqs`"
  value       = aws_iam_policy.bridge.arn
}

output "flows_policy_arn" {
  description = "Attach to the role the Prefect workers (and `icefloe serve`) run as"
  value       = aws_iam_policy.flows.arn
}
