"""Data governance: personal-data tokenization, GDPR erasure, the audit trail and secret handling."""
