"""The only code that talks to the outside: Kubernetes, Prometheus and the event sink."""
