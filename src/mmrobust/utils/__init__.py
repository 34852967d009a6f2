"""Small shared utilities (atomic file writes, seeding, provenance)."""
