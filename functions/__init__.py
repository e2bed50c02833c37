"""The serverless side of Arbiter: the four stage functions, their core workflow and adapters."""
