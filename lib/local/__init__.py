"""The local development stack: a real S3 server (SeaweedFS) on loopback, a small synthetic archive
for the demo, tests and benchmarks, and the test-only fault hooks. Nothing here runs in production
except :func:`lib.local.faults.checkpoint`, which does nothing unless a test asks it to."""
