variable "name" {
  description = "The cube's name (the spec's `name`); prefixes every resource"
  type        = string
}

variable "region" {
  description = "AWS region of the buckets, queues and Lambda functions"
  type        = string
  default     = "us-east-1"
}

variable "archive_bucket" {
  description = "Existing bucket holding the source archive (the spec's source.url)"
  type        = string
}

variable "source_prefix" {
  description = "Key prefix of the cube's objects in the archive bucket, e.g. oae/"
  type        = string
  default     = ""
}

variable "cube_bucket" {
  description = "Bucket for the cube's Icechunk repository (the spec's repo.url)"
  type        = string
}

variable "use_eventbridge" {
  description = "Route S3 events through EventBridge instead of a direct S3 -> SQS notification"
  type        = bool
  default     = false
}
