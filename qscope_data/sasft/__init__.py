"""SAE-guided SFT (SASFT): choose language features (prepare), penalise them off-language in training (loss,
trainer — the only TRL importer), measure code-switching (evaluate, langdetect)."""
