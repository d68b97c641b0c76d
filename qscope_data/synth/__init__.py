"""Feature-targeted synthesis: generators (offline, local transformers with steering, OpenAI-compatible HTTP), the
requests built from gap features, verification by re-encoding, and the `qscope synth` stage."""
