"""Runners: where a job's entry point executes (child process, Ray actors, Kubernetes Job)."""
