# AWS for one icefloe cube: the archive bucket's notifications (S3 -> SQS, or S3 -> EventBridge -> SQS)
# with a dead-letter queue, the cube's Icechunk bucket, the IAM the bridge and the flows need, and the
# Lithops Lambda runtime (ECR repository, execution role, storage bucket).
#
#   terraform -chdir=infra/aws init
#   terraform -chdir=infra/aws apply -var archive_bucket=my-archive -var source_prefix=oae/ \
#       -var cube_bucket=my-cubes -var name=oae-efficiency
#
# Then run `icefloe bridge sqs $(terraform -chdir=infra/aws output -raw queue_url)` and serve the cube.

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

provider "aws" {
  region = var.region
}

data "aws_caller_identity" "current" {}

# --- buckets ---------------------------------------------------------------------------------

data "aws_s3_bucket" "archive" {
  bucket = var.archive_bucket
}

resource "aws_s3_bucket" "cubes" {
  bucket = var.cube_bucket
}

resource "aws_s3_bucket_versioning" "cubes" {
  bucket = aws_s3_bucket.cubes.id
  versioning_configuration {
    status = "Suspended" # Icechunk keeps its own history; object versions would only cost money
  }
}

resource "aws_s3_bucket_public_access_block" "cubes" {
  bucket                  = aws_s3_bucket.cubes.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket" "lithops" {
  bucket        = "${var.name}-lithops-${data.aws_caller_identity.current.account_id}"
  force_destroy = true # only Lithops' temporary call data lives here
}

# --- notifications: S3 (or EventBridge) -> SQS, with a dead-letter queue -----------------------

resource "aws_sqs_queue" "dead_letters" {
  name                      = "${var.name}-notifications-dlq"
  message_retention_seconds = 1209600
}

resource "aws_sqs_queue" "notifications" {
  name                       = "${var.name}-notifications"
  visibility_timeout_seconds = 120
  receive_wait_time_seconds  = 20
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letters.arn
    maxReceiveCount     = 5
  })
}

data "aws_iam_policy_document" "queue" {
  statement {
    sid     = "S3AndEventBridgeMaySend"
    actions = ["sqs:SendMessage"]
    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com", "events.amazonaws.com"]
    }
    resources = [aws_sqs_queue.notifications.arn]
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [data.aws_s3_bucket.archive.arn, aws_cloudwatch_event_rule.object_created.arn]
    }
  }
}

resource "aws_sqs_queue_policy" "notifications" {
  queue_url = aws_sqs_queue.notifications.id
  policy    = data.aws_iam_policy_document.queue.json
}

resource "aws_s3_bucket_notification" "archive" {
  bucket      = data.aws_s3_bucket.archive.id
  eventbridge = var.use_eventbridge

  dynamic "queue" {
    for_each = var.use_eventbridge ? [] : [1]
    content {
      queue_arn     = aws_sqs_queue.notifications.arn
      events        = ["s3:ObjectCreated:*"]
      filter_prefix = var.source_prefix
    }
  }

  depends_on = [aws_sqs_queue_policy.notifications]
}

resource "aws_cloudwatch_event_rule" "object_created" {
  name        = "${var.name}-object-created"
  description = "Objects created under the cube's source prefix"
  state       = var.use_eventbridge ? "ENABLED" : "DISABLED"
  event_pattern = jsonencode({
    source        = ["aws.s3"]
    "detail-type" = ["Object Created"]
    detail = {
      bucket = { name = [data.aws_s3_bucket.archive.id] }
      object = { key = [{ prefix = var.source_prefix }] }
    }
  })
}

resource "aws_cloudwatch_event_target" "to_queue" {
  rule = aws_cloudwatch_event_rule.object_created.name
  arn  = aws_sqs_queue.notifications.arn
}

# --- IAM: the bridge, and the flows (Prefect workers) ---------------------------------------

data "aws_iam_policy_document" "bridge" {
  statement {
    sid       = "ReadNotifications"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"]
    resources = [aws_sqs_queue.notifications.arn]
  }
  statement {
    sid       = "DeadLetterUnreadable"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dead_letters.arn]
  }
}

resource "aws_iam_policy" "bridge" {
  name   = "${var.name}-bridge"
  policy = data.aws_iam_policy_document.bridge.json
}

data "aws_iam_policy_document" "flows" {
  statement {
    sid       = "ListAndReadTheArchive"
    actions   = ["s3:ListBucket", "s3:GetObject"]
    resources = [data.aws_s3_bucket.archive.arn, "${data.aws_s3_bucket.archive.arn}/${var.source_prefix}*"]
  }
  statement {
    sid       = "ReadWriteTheCube"
    actions   = ["s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = [aws_s3_bucket.cubes.arn, "${aws_s3_bucket.cubes.arn}/*"]
  }
  statement {
    sid       = "RunLithopsOnLambda"
    actions   = ["lambda:InvokeFunction", "lambda:GetFunction", "lambda:CreateFunction", "lambda:UpdateFunctionConfiguration", "lambda:ListFunctions"]
    resources = ["*"]
  }
  statement {
    sid       = "PassTheLithopsRole"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.lithops.arn]
  }
  statement {
    sid       = "LithopsCallData"
    actions   = ["s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = [aws_s3_bucket.lithops.arn, "${aws_s3_bucket.lithops.arn}/*"]
  }
}

resource "aws_iam_policy" "flows" {
  name   = "${var.name}-flows"
  policy = data.aws_iam_policy_document.flows.json
}

# --- Lithops on Lambda: runtime image repository and execution role -------------------------

resource "aws_ecr_repository" "lithops_runtime" {
  name                 = "lithops.user_runtimes/icefloe-lambda-runtime"
  image_tag_mutability = "MUTABLE"
}

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "lithops" {
  name               = "${var.name}-lithops-lambda"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

data "aws_iam_policy_document" "lithops" {
  statement {
    sid       = "ReadTheArchive"
    actions   = ["s3:GetObject", "s3:ListBucket"]
    resources = [data.aws_s3_bucket.archive.arn, "${data.aws_s3_bucket.archive.arn}/${var.source_prefix}*"]
  }
  statement {
    sid       = "LithopsCallData"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"]
    resources = [aws_s3_bucket.lithops.arn, "${aws_s3_bucket.lithops.arn}/*"]
  }
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["arn:aws:logs:*:*:*"]
  }
}

resource "aws_iam_role_policy" "lithops" {
  name   = "${var.name}-lithops"
  role   = aws_iam_role.lithops.id
  policy = data.aws_iam_policy_document.lithops.json
}
