"""Model registry: models -> versions -> artifacts, aliases and lineage (see docs/registry.md)."""
