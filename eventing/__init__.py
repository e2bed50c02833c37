"""The CloudEvent contract manifests and the local broker that routes by them."""
