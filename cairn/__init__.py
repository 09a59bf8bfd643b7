"""cairn: a Kubernetes-native LLM platform."""

__version__ = "0.1.0"
