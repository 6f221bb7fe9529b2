"""Data governance: personal-data tokenization and column encryption, GDPR erasure, the audit trail and
secret handling."""
