"""qscope-data: SAE-feature data curation."""
